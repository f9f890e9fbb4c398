# SPDX-License-Identifier: Apache-2.0
"""Python client of the attribution server (gRPC package attribution.v1).

    from attribution_client import AttributionClient
    client = AttributionClient("localhost:50051")
    client.attribute(prompt="The cup is tiny. Q: Is it big? A:", target=" No").to_dataframe()
    client.attribute_components(pairs=[(clean, corrupted)], answer=" Yes", wrong_answer=" No").grid("heads")

AsyncAttributionClient is the asyncio form; attribution_client.captum holds Captum interoperability
(AttributionProvider, a RemoteLLMProvider). Options mirror the C++ client (client/attribution_client.h).
"""
from importlib.metadata import PackageNotFoundError, version as _version

from .aio import AsyncAttributionClient, AsyncStream
from .client import AttributeStream, AttributionClient, ComponentStream, GenerateStream, Stream
from .errors import (AttributionError, Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition, Internal,
                     InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable)
from .options import (AttributeOptions, ClientOptions, ComponentOptions, FeatureGroup, GenerateOptions,
                      GenerationSettings, LogprobsOptions, PromptPair, read_bearer_token_file)
from .results import (Attribution, ComponentAttribution, ComponentGrid, Faithfulness, Feature, Generation, Logprobs,
                      ModelInfo, PairComponents, Progress, RunStats, SettingsUsed, Token, TokenLogprob, TopToken)

PROTO_PACKAGE = "attribution.v1"
try:
    __version__ = _version("attribution-client")
except PackageNotFoundError:  # imported from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AsyncAttributionClient", "AsyncStream", "AttributeOptions", "AttributeStream", "Attribution",
    "AttributionClient", "AttributionError", "Cancelled", "ClientOptions", "ComponentAttribution", "ComponentGrid",
    "ComponentOptions", "ComponentStream", "DataLoss", "DeadlineExceeded", "FailedPrecondition", "Faithfulness",
    "Feature", "FeatureGroup", "GenerateOptions", "GenerateStream", "Generation", "GenerationSettings", "Internal",
    "InvalidArgument", "Logprobs", "LogprobsOptions", "ModelInfo", "NotFound", "PROTO_PACKAGE", "PairComponents",
    "PermissionDenied", "Progress", "PromptPair", "ResourceExhausted", "RunStats", "SettingsUsed", "Stream",
    "Token", "TokenLogprob", "TopToken", "Unauthenticated", "Unavailable", "read_bearer_token_file",
]
