# SPDX-License-Identifier: Apache-2.0
"""Python client of the attribution server (gRPC package attribution.v1).

    from attribution_client import AttributionClient
    client = AttributionClient("localhost:50051")
    client.attribute(prompt="The cup is tiny. Q: Is it big? A:", target=" No").to_dataframe()

AsyncAttributionClient is the asyncio form; attribution_client.captum holds Captum interoperability
(AttributionProvider, a RemoteLLMProvider). Options mirror the C++ client (client/attribution_client.h).
"""
from importlib.metadata import PackageNotFoundError, version as _version

from .aio import AsyncAttributionClient, AsyncStream
from .client import AttributeStream, AttributionClient, GenerateStream, Stream
from .errors import (AttributionError, Cancelled, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument,
                     NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable)
from .options import (AttributeOptions, ClientOptions, FeatureGroup, GenerateOptions, GenerationSettings,
                      LogprobsOptions, read_bearer_token_file)
from .results import (Attribution, Faithfulness, Feature, Generation, Logprobs, ModelInfo, Progress, RunStats, Token,
                      TokenLogprob, TopToken)

PROTO_PACKAGE = "attribution.v1"
try:
    __version__ = _version("attribution-client")
except PackageNotFoundError:  # imported from a source tree
    __version__ = "0+unknown"

__all__ = [
    "AsyncAttributionClient", "AsyncStream", "AttributeOptions", "AttributeStream", "Attribution",
    "AttributionClient", "AttributionError", "Cancelled", "ClientOptions", "DeadlineExceeded", "FailedPrecondition",
    "Faithfulness", "Feature", "FeatureGroup", "GenerateOptions", "GenerateStream", "Generation",
    "GenerationSettings", "Internal", "InvalidArgument", "Logprobs", "LogprobsOptions", "ModelInfo", "NotFound",
    "PROTO_PACKAGE", "PermissionDenied", "Progress", "ResourceExhausted", "RunStats", "Stream", "Token",
    "TokenLogprob", "TopToken", "Unauthenticated", "Unavailable", "read_bearer_token_file",
]
