# SPDX-License-Identifier: Apache-2.0
"""TLS, mutual TLS and bearer tokens through the Python package, with certificates made here by
openssl (as tests/e2e/tls_auth_e2e_test.cc makes them): the right credentials get the same answers as
the C++ client; a missing token is UNAUTHENTICATED; an untrusted or missing certificate never connects."""
from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess

import grpc
import numpy as np
import pytest

import attribution_client as ac
from conftest import PROMPT, Server, cli_json

SCRIPT = r"""set -e
key() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$1.key" "${@:2}" 2>/dev/null; }
key ca -x509 -days 1 -subj /CN=test-ca -out ca.pem
key rogue-ca -x509 -days 1 -subj /CN=rogue-ca -out rogue-ca.pem
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
key server -subj /CN=localhost -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile san.ext -out server.pem 2>/dev/null
key client -subj /CN=client -out client.csr
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out client.pem 2>/dev/null
key rogue -subj /CN=rogue -out rogue.csr
openssl x509 -req -in rogue.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -days 1 -out rogue.pem 2>/dev/null
openssl pkey -in client.key -aes256 -passout pass:secret -out encrypted.key
printf '# tokens\nsecret-token-1\n\nsecret-token-2\n' > tokens
printf 'secret-token-2\n' > token-file
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", "-c", SCRIPT], cwd=d, check=True)
    return d


@pytest.fixture(scope="module")
def mtls_server(certs):
    s = Server([f"--tls_cert={certs / 'server.pem'}", f"--tls_key={certs / 'server.key'}",
                f"--tls_client_ca={certs / 'ca.pem'}", f"--auth_tokens_file={certs / 'tokens'}"])
    yield s
    s.stop()


def options(certs, server, **fields) -> ac.ClientOptions:
    base = dict(target=f"localhost:{server.port}", tls=True, ca_file=str(certs / "ca.pem"),
                cert_file=str(certs / "client.pem"), key_file=str(certs / "client.key"),
                bearer_token="secret-token-1", timeout=30, max_attempts=1)
    base.update(fields)
    return ac.ClientOptions(**base)


def test_mutual_tls_with_token_equals_cpp_client(certs, mtls_server):
    with ac.AttributionClient(options(certs, mtls_server)) as c:
        a = c.attribute(prompt=PROMPT, target=" Yes", method="feature_ablation")
        assert c.health() == "SERVING"
        assert [t.text for t in c.generate_stream(prompt=PROMPT, max_new_tokens=2)]
    reference = cli_json(f"localhost:{mtls_server.port}", "attribute", f"--prompt={PROMPT}", "--target= Yes",
                         "--method=feature_ablation", "--tls", f"--ca={certs / 'ca.pem'}",
                         f"--cert={certs / 'client.pem'}", f"--key={certs / 'client.key'}",
                         f"--token_file={certs / 'token-file'}")
    np.testing.assert_allclose(a.sequence, reference["sequence_attribution"], rtol=1e-6, atol=1e-9)


def test_token_read_from_file_and_server_name_override(certs, mtls_server):
    token = ac.read_bearer_token_file(str(certs / "token-file"))
    assert token == "secret-token-2"
    o = options(certs, mtls_server, target=f"127.0.0.1:{mtls_server.port}", tls_server_name="localhost",
                bearer_token=token)
    with ac.AttributionClient(o) as c:
        assert c.list_models()[0].name == "default"


def test_missing_or_wrong_token_is_unauthenticated(certs, mtls_server):
    for token in ("", "wrong-token"):
        with ac.AttributionClient(options(certs, mtls_server, bearer_token=token)) as c:
            with pytest.raises(ac.Unauthenticated) as error:
                c.list_models()
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert c.health() == "SERVING"  # probes need no token

    async def run():
        async with ac.AsyncAttributionClient(options(certs, mtls_server, bearer_token="")) as c:
            await c.logprobs(prompt=PROMPT, target=" Yes")

    with pytest.raises(ac.Unauthenticated):
        asyncio.run(run())


@pytest.mark.parametrize("change", ["no_client_certificate", "untrusted_client_certificate", "untrusted_server",
                                    "plaintext"])
def test_bad_transport_never_connects(certs, mtls_server, change):
    fields = {
        "no_client_certificate": dict(cert_file="", key_file=""),
        "untrusted_client_certificate": dict(cert_file=str(certs / "rogue.pem"), key_file=str(certs / "rogue.key")),
        "untrusted_server": dict(ca_file=str(certs / "rogue-ca.pem")),
        "plaintext": dict(tls=False, ca_file="", cert_file="", key_file=""),
    }[change]
    with ac.AttributionClient(options(certs, mtls_server, timeout=30, **fields)) as c:
        with pytest.raises(ac.Unavailable):
            c.list_models()


@pytest.mark.parametrize("change,message", [
    (dict(key_file="rogue.key"), 'key_file ".*rogue.key" is not the private key of the first certificate in cert_file'),
    (dict(cert_file="client.key", key_file="client.pem"), 'cert_file ".*client.key" holds no PEM certificate'),
    (dict(ca_file="missing.pem"), "missing.pem"),
    (dict(ca_file="client.key"), 'ca_file ".*client.key" holds no PEM certificate'),
    (dict(key_file="encrypted.key"), 'key_file ".*encrypted.key" is encrypted')])
def test_certificates_and_keys_that_cannot_work_are_refused_locally(certs, mtls_server, change, message):
    """gRPC took them without a word, and every call failed UNAVAILABLE, naming no file."""
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        ac.AttributionClient(options(certs, mtls_server, **{k: str(certs / v) for k, v in change.items()}))


def test_pem_blocks_are_judged_as_grpc_reads_them(certs, mtls_server, tmp_path):
    """gRPC keeps a chain's certificates before a later block that does not parse (the key was blamed), and loads
    none from a first block without its END line or with text before BEGIN on its line (they passed the check,
    then every call failed UNAVAILABLE naming no file)."""
    damaged = b"-----BEGIN CERTIFICATE-----\nnot base64 %%%\n-----END CERTIFICATE-----\n"
    (tmp_path / "chain.pem").write_bytes((certs / "client.pem").read_bytes() + damaged)
    ac.AttributionClient(options(certs, mtls_server, cert_file=str(tmp_path / "chain.pem")))
    (tmp_path / "no_end.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n" + (certs / "ca.pem").read_bytes())
    with pytest.raises(ValueError, match="its first certificate does not parse"):
        ac.AttributionClient(options(certs, mtls_server, ca_file=str(tmp_path / "no_end.pem")))
    (tmp_path / "prefixed.pem").write_bytes(b"x " + (certs / "ca.pem").read_bytes())
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        ac.AttributionClient(options(certs, mtls_server, ca_file=str(tmp_path / "prefixed.pem")))


def test_the_token_stays_out_of_reprs_and_type_errors(certs, mtls_server, tmp_path):
    """Notebooks show repr(), and tracebacks reach logs: a token read in binary mode was printed whole."""
    o = options(certs, mtls_server, bearer_token="secret-token-1")
    assert "secret-token-1" not in repr(o)
    with pytest.raises(TypeError) as error:
        ac.AttributionClient(options(certs, mtls_server, bearer_token=b"secret-token-1"))
    assert "secret-token" not in str(error.value) and "bytes" in str(error.value)
    # The server's tokens file format: a comment first was sent as the token; a byte-order mark made it unsendable.
    (tmp_path / "token").write_bytes(b"\xef\xbb\xbf# for prod\n\n  secret-token-2 \r\nsecret-token-1\n")
    assert ac.read_bearer_token_file(str(tmp_path / "token")) == "secret-token-2"
    (tmp_path / "none").write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        ac.read_bearer_token_file(str(tmp_path / "none"))


def test_half_a_key_pair_is_refused_locally(certs, mtls_server):
    with pytest.raises(ValueError, match="cert_file and key_file"):
        ac.AttributionClient(options(certs, mtls_server, key_file=""))


@pytest.mark.parametrize("name", ["ca_file", "cert_file", "tls_server_name"])
def test_a_certificate_option_without_tls_is_refused_locally(certs, mtls_server, name):
    # It connected in plaintext, the files neither read nor checked.
    fields = dict(tls=False, ca_file="", cert_file="", key_file="")
    fields[name] = str(certs / "ca.pem") if name != "tls_server_name" else "localhost"
    if name == "cert_file":
        fields["key_file"] = str(certs / "client.key")
    with pytest.raises(ValueError, match=f"{name}: given without tls=True"):
        ac.AttributionClient(options(certs, mtls_server, **fields))


def test_token_over_plaintext(certs):
    s = Server([f"--auth_tokens_file={certs / 'tokens'}"])
    try:
        with ac.AttributionClient(s.address, bearer_token="secret-token-2") as c:
            assert c.logprobs(prompt=PROMPT, target=" Yes").total_log_prob < 0
        with ac.AttributionClient(s.address) as c:
            with pytest.raises(ac.Unauthenticated):
                c.generate(prompt=PROMPT, max_new_tokens=1)
    finally:
        s.stop()


def test_batch_and_bench_reach_a_mutual_tls_server_with_the_clis_flags(certs, mtls_server, tmp_path):
    """attribution-batch had --tls and --ca but no --cert / --key / --tls_server_name, and attribution-bench no
    TLS flag at all: neither could reach a server with --tls_client_ca. The three programs share the flags."""
    flags = ["--tls", f"--ca={certs / 'ca.pem'}", f"--cert={certs / 'client.pem'}", f"--key={certs / 'client.key'}",
             "--tls_server_name=localhost", f"--token_file={certs / 'token-file'}"]
    address = f"127.0.0.1:{mtls_server.port}"  # the certificate's name comes from --tls_server_name
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "q1", "prompt": PROMPT, "target": " Yes"}) + "\n")
    out = tmp_path / "out.jsonl"
    done = subprocess.run([os.environ["ATTRIBUTION_BATCH_BINARY"], f"--server={address}", f"--input={rows}",
                           f"--output={out}", "--method=feature_ablation", *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text().splitlines()[0])
    reference = cli_json(f"localhost:{mtls_server.port}", "attribute", f"--prompt={PROMPT}", "--target= Yes",
                         "--method=feature_ablation", *flags)
    np.testing.assert_allclose(result["attribution"], reference["sequence_attribution"], rtol=1e-6,
                               atol=1e-9)

    done = subprocess.run([os.environ["ATTRIBUTION_BENCH_BINARY"], f"--server={address}", "--mix=logprobs=1",
                           "--concurrency=1", "--duration=1", "--json", *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    logprobs = json.loads(done.stdout)["rpcs"]["logprobs"]
    assert logprobs["ok"] == logprobs["calls"] > 0
    # Without the client certificate the server refuses the connection.
    done = subprocess.run([os.environ["ATTRIBUTION_BENCH_BINARY"], f"--server={address}", "--mix=logprobs=1",
                           "--concurrency=1", "--duration=1", "--json", *flags[:2], flags[4], flags[5]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "cannot list models: UNAVAILABLE" in done.stderr, done.stderr


def _mtls_channel(certs, server) -> grpc.Channel:
    return grpc.secure_channel(f"localhost:{server.port}", grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(), (certs / "client.key").read_bytes(), (certs / "client.pem").read_bytes()))


def test_strangers_calls_are_rationed_in_the_log_and_never_reach_it_raw(certs, mtls_server):
    """A call without a valid token costs its client nothing: 36,200 a second wrote 15 MB of log in 5 s, and its
    model name went into the line raw (U+009B is a terminal's CSI: `kubectl logs` obeyed it). Such lines are
    rationed (each says how many like it were left out), name no model, and a request that does not parse is
    refused for its missing token before its parser's complaint is shown."""
    hostile = "\u009b2J\u009b32mserving OK\u202e"
    model = hostile.encode()
    request = b"\x0a" + bytes([len(model)]) + model  # LogprobsRequest.model
    channel = _mtls_channel(certs, mtls_server)
    logprobs = channel.unary_unary("/attribution.v1.AttributionService/Logprobs")
    calls = 300
    futures = [logprobs.future(request, timeout=30) for _ in range(calls)]
    assert {f.exception().code() for f in futures} == {grpc.StatusCode.UNAUTHENTICATED}
    with pytest.raises(grpc.RpcError) as error:
        logprobs(b"\x0a\x05ab", timeout=30)  # field 1 says 5 bytes, 2 follow
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED, error.value.details()
    assert "parse" not in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        logprobs(b"\x0a\x05ab", timeout=30, metadata=[("authorization", "Bearer secret-token-1")])
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "does not parse" in error.value.details()
    channel.close()

    def unauthenticated(lines):
        return [line for line in lines if line.get("code") == "UNAUTHENTICATED"]

    text, lines = mtls_server.log_lines(until=lambda lines: len(unauthenticated(lines)) >= 2)
    logged = unauthenticated(lines)
    assert 1 <= len(logged) <= calls // 2, f"{len(logged)} lines for {calls + 1} calls"
    assert sum(1 + line.get("like_it_not_logged", 0) for line in logged) <= calls + 1
    assert all(line["model"] == "" for line in logged)
    for raw in ("\u009b", "\u202e", "serving OK"):
        assert raw not in text


def test_failed_handshakes_are_warnings_and_rationed(certs, mtls_server):
    """Junk sent to a TLS port (no handshake) wrote an ERROR line per connection: 38,152 lines in 5 s."""
    import socket
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", mtls_server.port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.recv(100)

    def handshakes(lines):
        return [line for line in lines if line.get("event") == "grpc" and "Handshake failed" in line.get("detail", "")]

    _, lines = mtls_server.log_lines(until=lambda lines: len(handshakes(lines)) >= 1)
    failed = handshakes(lines)
    assert 1 <= len(failed) <= 140, f"{len(failed)} lines for 200 connections"
    assert {line["severity"] for line in failed} == {"WARNING"}
