// SPDX-License-Identifier: Apache-2.0
// Renders attributions for people: a coloured terminal heatmap (tokens on a green/red background by
// sign and strength, as Captum's visualisation), a self-contained HTML page, and JSON.
#pragma once
#include <string>

#include "client/attribution_client.h"

namespace attribution::client {

// Prompt tokens coloured by their feature's sequence attribution, a ranked table, and the
// per-output-token matrix as a grid when present. `color` false: plain text with the numbers.
std::string TerminalHeatmap(const Attribution& attribution, bool color);

// A standalone HTML page (no external resources): the same token colouring and matrix heatmap.
std::string HtmlReport(const Attribution& attribution);

// Every field of the attribution as JSON text.
std::string AttributionJson(const Attribution& attribution);

}  // namespace attribution::client
