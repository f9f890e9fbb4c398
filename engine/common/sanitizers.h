// SPDX-License-Identifier: Apache-2.0
// Whether this translation unit is built with AddressSanitizer or ThreadSanitizer. GCC says so with
// __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__; clang only through __has_feature.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define ATTRIBUTION_ADDRESS_SANITIZER 1
#endif
#if defined(__SANITIZE_THREAD__)
#define ATTRIBUTION_THREAD_SANITIZER 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTRIBUTION_ADDRESS_SANITIZER 1
#endif
#if __has_feature(thread_sanitizer)
#define ATTRIBUTION_THREAD_SANITIZER 1
#endif
#endif

// For preprocessor decisions: defined in a build with AddressSanitizer or ThreadSanitizer.
#if defined(ATTRIBUTION_ADDRESS_SANITIZER) || defined(ATTRIBUTION_THREAD_SANITIZER)
#define ATTRIBUTION_SANITIZED_BUILD 1
#endif

namespace attribution {

#ifdef ATTRIBUTION_ADDRESS_SANITIZER
inline constexpr bool kAddressSanitizer = true;
#else
inline constexpr bool kAddressSanitizer = false;
#endif

#ifdef ATTRIBUTION_THREAD_SANITIZER
inline constexpr bool kThreadSanitizer = true;
#else
inline constexpr bool kThreadSanitizer = false;
#endif

}  // namespace attribution
