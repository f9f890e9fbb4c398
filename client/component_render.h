// SPDX-License-Identifier: Apache-2.0
// Component attributions for people: each grid as a coloured table (layers down; heads or the clean
// prompt's positions across; one block per layer for (layer, position, head)), in the terminal and as
// a standalone HTML page with each value on hover, and as JSON.
#pragma once
#include <string>

#include "client/attribution_client.h"

namespace attribution::client {

// `color` false: plain numbers.
std::string TerminalComponents(const ComponentAttribution& attribution, bool color);
std::string ComponentHtmlReport(const ComponentAttribution& attribution);
std::string ComponentJson(const ComponentAttribution& attribution);

}  // namespace attribution::client
