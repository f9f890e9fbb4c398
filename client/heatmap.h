// SPDX-License-Identifier: Apache-2.0
// Renders attributions for people: a coloured terminal heatmap (tokens on a green/red background by
// sign and strength, as Captum's visualisation), a self-contained HTML page, and JSON.
#pragma once
#include <string>

#include "client/attribution_client.h"

namespace attribution::client {

// One line naming the scored target tokens with their ids, so a user sees at once what was scored:
// `target tokens (1): " No" #1939`.
std::string TargetTokensLine(const std::vector<Token>& tokens);

// The target tokens, then the prompt with each feature coloured by its sequence attribution and
// fixed tokens (no feature: special tokens by default) greyed, a ranked table, and the per-output-
// token matrix as a grid when present. `color` false: plain text, features in [ ], fixed in ( ).
std::string TerminalHeatmap(const Attribution& attribution, bool color);

// A standalone HTML page (no external resources): the same token colouring and matrix heatmap.
std::string HtmlReport(const Attribution& attribution);

// `text` safe inside HTML elements and attribute values.
std::string HtmlEscape(const std::string& text);

// Every field of the attribution as JSON text.
std::string AttributionJson(const Attribution& attribution);

}  // namespace attribution::client
