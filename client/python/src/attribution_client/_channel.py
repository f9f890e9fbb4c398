# SPDX-License-Identifier: Apache-2.0
"""Channel settings shared by the sync and asyncio clients: credentials, retries of unary calls on UNAVAILABLE
only (gRPC's retry policy; the C++ client retries streams too), reconnect backoff, message size limits."""
from __future__ import annotations

import ipaddress
import json
import re
import ssl
import tempfile
from typing import List, Optional, Tuple

import grpc
from grpc_health.v1 import health_pb2

from . import _convert
from .options import ClientOptions

# The unary methods, the ones retried, read from the services' descriptors. A blocking grpcio stream with a
# retry policy whose server dies before its first message waits forever, past its deadline and its cancel()
# (grpcio 1.85; the asyncio client and a stream already answering are not affected), so streams are not retried.
UNARY_METHODS = tuple((service.full_name, tuple(m.name for m in service.methods if not m.server_streaming))
                      for service in (_convert.pb.DESCRIPTOR.services_by_name["AttributionService"],
                                      health_pb2.DESCRIPTOR.services_by_name["Health"]))

# The longest request id and bearer token sent. A call's metadata over the server's limit (gRPC's default,
# 8 KiB) makes gRPC drop the whole connection, failing the other calls on the channel with
# RESOURCE_EXHAUSTED; these two stay well under it together. The server writes at most 128 bytes of a
# request id in its log lines.
MAX_REQUEST_ID_BYTES = 1024
MAX_BEARER_TOKEN_BYTES = 4096


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def service_config(o: ClientOptions) -> str:
    if o.load_balancing not in ("pick_first", "round_robin"):
        raise ValueError(f'load_balancing: "{o.load_balancing}" is not pick_first or round_robin')
    config: dict = {"loadBalancingConfig": [{o.load_balancing: {}}]}
    if o.max_attempts > 1:
        config["methodConfig"] = [{
            "name": [{"service": s, "method": m} for s, methods in UNARY_METHODS for m in methods],
            "retryPolicy": {"maxAttempts": min(5, o.max_attempts), "initialBackoff": f"{o.initial_backoff:.3f}s",
                            "maxBackoff": f"{o.max_backoff:.3f}s", "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"]},
        }]
    return json.dumps(config)


def _is_this_machine(host: str) -> bool:
    """As the C++ client's IsThisMachine: a loopback or unspecified address, or localhost by name."""
    name = host.lower()
    if name.endswith("."):  # the root's dot
        name = name[:-1]
    if name in ("localhost", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def is_loopback(target: str) -> bool:
    """Whether every address of `target` is this machine's (as the C++ client's IsLoopbackTarget)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme):]
            break
    for address in target.split(","):
        host = address[1:].split("]")[0] if address.startswith("[") else address.rsplit(":", 1)[0]
        if not _is_this_machine(host):
            return False
    return True


def channel_args(o: ClientOptions) -> List[Tuple[str, object]]:
    args: List[Tuple[str, object]] = [
        ("grpc.service_config", service_config(o)),
        ("grpc.enable_retries", 1 if o.max_attempts > 1 else 0),
        ("grpc.initial_reconnect_backoff_ms", 100),
        # gRPC reads its "min reconnect backoff" as the time a connection attempt is given.
        ("grpc.min_reconnect_backoff_ms", int(o.connect_timeout * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(o.max_backoff * 1000)),
        ("grpc.max_receive_message_length", o.max_message_bytes),
        ("grpc.max_send_message_length", o.max_message_bytes),
        ("grpc.per_rpc_retry_buffer_size", o.max_message_bytes),  # retries resend requests over 256 KiB too
        # A connection of its own: gRPC pools connections per process, so every client to one server shared one
        # and could not send past its stream limit (the README's "open more channels").
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if o.keepalive > 0:
        args += [("grpc.keepalive_time_ms", int(o.keepalive * 1000)),
                 ("grpc.keepalive_timeout_ms", int(o.keepalive * 1000)),
                 ("grpc.http2.max_pings_without_data", 0)]  # gRPC stops after 2 by default, mid-call
    if o.tls and o.tls_server_name:
        args.append(("grpc.ssl_target_name_override", o.tls_server_name))
    if is_loopback(o.target):  # a proxy from the environment took calls to this machine too
        args.append(("grpc.enable_http_proxy", 0))
    return args


def credentials(o: ClientOptions) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials (None: plaintext). Files are read now so a wrong path fails at connect."""
    tls_only = [name for name in ("ca_file", "cert_file", "key_file", "tls_server_name") if getattr(o, name, None)]
    if not o.tls:
        if tls_only:  # the call would go out in plaintext, certificates unread and unchecked
            raise ValueError(f"{tls_only[0]}: given without tls=True; set tls=True, or leave it out")
        return None
    if bool(o.cert_file) != bool(o.key_file):
        raise ValueError("cert_file and key_file: give both for mutual TLS, or neither")
    roots = _read(o.ca_file) if o.ca_file else None
    key = _read(o.key_file) if o.key_file else None
    chain = _read(o.cert_file) if o.cert_file else None
    _check_tls_files(o, roots)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=chain)


class _Encrypted(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _Encrypted()


# A PEM block of a certificate: "CERTIFICATE", and OpenSSL's "X509 CERTIFICATE" and "TRUSTED CERTIFICATE".
# Its lines whole, as OpenSSL reads them: text before BEGIN on its line is no block.
_CERTIFICATE_BLOCK = re.compile(
    rb"^-----BEGIN ((?:X509 |TRUSTED )?CERTIFICATE)-----\r?$(.*?)^-----END \1-----", re.DOTALL | re.MULTILINE)


def _check_first_certificate(where: str, text: bytes) -> None:
    """gRPC keeps a bundle's certificates before its first block that does not parse, so the first is what must.
    Python's ssl reads only the plain label from memory: the first block is read under it (a trusted one's
    trust settings, which follow the certificate, are not read)."""
    first = _CERTIFICATE_BLOCK.search(text)
    if first is None:
        raise ValueError(f"{where} holds no PEM certificate")
    body = first.group(2)
    if b"-----BEGIN" in body:  # a block without its END line: grpcio (BoringSSL) loads no certificate
        raise ValueError(f"{where}: its first certificate does not parse (no END line)")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=(b"-----BEGIN CERTIFICATE-----" + body + b"-----END CERTIFICATE-----").decode("latin-1"))
    except (ssl.SSLError, ValueError) as error:
        raise ValueError(f"{where}: its first certificate does not parse ({getattr(error, 'reason', None) or error})"
                         ) from None


def _key_fits_first(chain: bytes, o: ClientOptions) -> bool:
    """Whether `o.key_file` is the private key of `chain`'s first certificate (ssl loads chains from files only)."""
    first = _CERTIFICATE_BLOCK.search(chain)
    with tempfile.NamedTemporaryFile(suffix=".pem") as leaf:
        leaf.write(b"-----BEGIN CERTIFICATE-----" + first.group(2) + b"-----END CERTIFICATE-----\n")
        leaf.flush()
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(leaf.name, o.key_file, password=_no_passphrase)
        except (ssl.SSLError, _Encrypted):
            return False
    return True


def _check_tls_files(o: ClientOptions, roots: Optional[bytes]) -> None:
    """gRPC takes a file that is no certificate, or a key of another certificate, without a word; every call
    then failed UNAVAILABLE ("Failed to create security handshaker"), naming no file. OpenSSL (Python's ssl)
    reads them as gRPC will. (Unlike the C++ clients, not whether a certificate has expired: Python's ssl does
    not say; the handshake's error does.) The files were read already, so a missing one is named."""
    if roots is not None:
        _check_first_certificate(f'ca_file "{o.ca_file}"', roots)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if o.cert_file:
        try:
            context.load_cert_chain(o.cert_file, o.key_file, password=_no_passphrase)
        except _Encrypted:
            raise ValueError(f'key_file "{o.key_file}" is encrypted; gRPC cannot ask for its passphrase '
                             "(`openssl pkey -in KEY -out PLAIN` writes it unencrypted)") from None
        except ssl.SSLError as error:
            chain = _read(o.cert_file)
            _check_first_certificate(f'cert_file "{o.cert_file}"', chain)
            # gRPC keeps a chain's certificates before a later block that does not parse: what counts is whether
            # the key is the first certificate's.
            if error.reason not in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED") and _key_fits_first(chain, o):
                return
            raise ValueError(f'key_file "{o.key_file}" is not the private key of the first certificate in '
                             f'cert_file "{o.cert_file}" ({error.reason or error})') from None


def check(o: ClientOptions) -> None:
    """Refuses settings gRPC would fail on later, or take for others, with a message naming them: a NaN
    connect_timeout fails int(), a NaN timeout expires every call at once."""
    if not isinstance(o.target, str):  # gRPC would fail on it with an AttributeError
        raise TypeError(f"target: must be a str (host:port or another gRPC target), not {o.target!r}")
    _convert.deadline("timeout", o.timeout)
    # gRPC keeps whole milliseconds of these and refuses a zero retry backoff, failing every call on the
    # channel ("Failed to create channel"); its channel arguments hold milliseconds in an int (24 days).
    for name in ("connect_timeout", "initial_backoff", "max_backoff"):
        value = _convert.seconds(name, getattr(o, name))
        if not 0.001 <= value <= 86400:
            raise ValueError(f"{name}: {value!r} s does not lie between 1 ms and 24 h")
    if o.max_attempts > 1 and o.initial_backoff > o.max_backoff:
        raise ValueError(f"initial_backoff: {o.initial_backoff!r} s is above max_backoff ({o.max_backoff!r} s)")
    # Servers permit a ping a second (a faster one counts against the client, which the server then disconnects).
    keepalive = _convert.seconds("keepalive", o.keepalive)
    if not (keepalive == 0 or 1 <= keepalive <= 86400):
        raise ValueError(f"keepalive: {keepalive!r} s is neither 0 (off) nor between 1 s and 24 h")
    # gRPC's retry policy allows at most 5 attempts, and took more as 5.
    _convert.integer("max_attempts", o.max_attempts, (1, 5))
    _check_port(o.target)
    _convert.integer("max_message_bytes", o.max_message_bytes, (1, _convert.INT32[1]))
    _metadata_value("bearer_token", o.bearer_token, MAX_BEARER_TOKEN_BYTES)


def _check_port(target: str) -> None:
    """gRPC reads a port past 65535 modulo 2**16: "127.0.0.1:112636" reached port 47100."""
    if target.startswith(("unix:", "unix-abstract:", "vsock:")):
        return
    port = target.rpartition(":")[2]
    if ":" in target and port.isascii() and port.isdigit() and not 1 <= int(port) <= 65535:
        raise ValueError(f"target: port {port} is outside [1, 65535]")


def _metadata_value(name: str, value: object, max_bytes: int) -> str:
    """`value` as an ASCII metadata value of at most `max_bytes`: gRPC refuses other characters only when
    the call starts, as an INTERNAL error (a failure of the server, to the caller) after logging its own
    trace to stderr; a long value gets the connection dropped."""
    if not isinstance(value, str):
        # The type only: the value may be a secret (a token read in binary mode), and tracebacks get logged.
        raise TypeError(f"{name}: must be a str, not {type(value).__name__}")
    if len(value) > max_bytes:
        raise ValueError(f"{name}: {len(value)} characters, more than the {max_bytes} a call's metadata may carry")
    bad = next((i for i, c in enumerate(value) if not " " <= c <= "~"), None)
    if bad is not None:
        raise ValueError(f"{name}: character {bad} ({value[bad]!r}) is not printable ASCII, which gRPC metadata "
                         "carries")
    return value


def metadata(o: ClientOptions) -> Tuple[Tuple[str, str], ...]:
    # As call metadata rather than call credentials: gRPC refuses those on plaintext channels, and the
    # server accepts tokens on both.
    return (("authorization", f"Bearer {o.bearer_token}"),) if o.bearer_token else ()


def with_request_id(metadata: Tuple[Tuple[str, str], ...], request_id: str) -> Tuple[Tuple[str, str], ...]:
    """The call's metadata: the client's, and the request id as x-request-id (the server logs it)."""
    if not request_id:
        return metadata
    return metadata + (("x-request-id", _metadata_value("request_id", request_id, MAX_REQUEST_ID_BYTES)),)
