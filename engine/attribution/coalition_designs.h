// SPDX-License-Identifier: Apache-2.0
// The perturbation methods' coalition designs, for the method table (methods.cc). Private to
// engine/attribution.
#pragma once

#include <memory>

#include "engine/attribution/methods.h"

namespace attribution::engine {

std::unique_ptr<CoalitionDesign> FeatureAblationCoalitions(const AttributionRequest& request, int64_t features);
std::unique_ptr<CoalitionDesign> ShapleyValuesCoalitions(const AttributionRequest& request, int64_t features);
std::unique_ptr<CoalitionDesign> ShapleyValueSamplingCoalitions(const AttributionRequest& request, int64_t features);
std::unique_ptr<CoalitionDesign> LimeCoalitions(const AttributionRequest& request, int64_t features);
std::unique_ptr<CoalitionDesign> KernelShapCoalitions(const AttributionRequest& request, int64_t features);

}  // namespace attribution::engine
