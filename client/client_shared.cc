// SPDX-License-Identifier: Apache-2.0
// attribution::client_shared is the static client libraries' objects linked whole (client/CMakeLists.txt); CMake
// wants a source of its own for a library, and this is it.
