//! TLS on the runner's listeners and the connection settings of
//! `grpcServers`, against the real binary with real clients: Python's
//! grpcio (gRPC C-core), `openssl s_client`, and a raw HTTP/2 client. The
//! certificates are made at test time with the `openssl` command line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use prost::Message;
use rbe_runner::proto::runner::CheckReadinessRequest;
use serde_json::{json, Value};

/// The DNS name in the test server certificates.
const SERVER_NAME: &str = "runner.test";

/// Runs `openssl` with `args` in `dir`, failing the test on error.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether the `openssl` command is there; the test is skipped loudly
/// when not.
fn openssl_available(test: &str) -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        skip(test, "the openssl command is not installed");
    }
    found
}

/// A CA, made with the openssl command line, that signs server
/// certificates for [`SERVER_NAME`] (ECDSA P-256).
struct TestCa {
    dir: tempfile::TempDir,
}

impl TestCa {
    fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                "/CN=rbe-runner test CA",
            ],
        );
        std::fs::write(
            dir.path().join("server.ext"),
            format!("subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        TestCa { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server key pair signed by the CA with serial `serial`, written
    /// as `<name>.pem` and `<name>.key`; returns the two paths.
    fn server_key_pair(&self, name: &str, serial: u32) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        let (pem, key, csr) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={SERVER_NAME}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial.to_string(),
                "-days",
                "10",
                "-extfile",
                "server.ext",
                "-out",
                &pem,
            ],
        );
        (dir.join(pem), dir.join(key))
    }
}

/// `grpcServers[0]` (the test's Unix socket) also listening on a free
/// loopback port, both with `tls`.
fn tls_server(tls: Value) -> Value {
    json!({ "grpcServers": [{ "listenAddresses": ["127.0.0.1:0"], "tls": tls }] })
}

fn inline_tls(certificate: &Path, key: &Path) -> Value {
    json!({ "serverKeyPair": { "inline": {
        "certificate": read(certificate),
        "privateKey": read(key),
    } } })
}

/// The TCP address the runner logged in its "serving" line.
fn tcp_address(runner: &TestRunner) -> String {
    let line = runner
        .log()
        .into_iter()
        .find(|line| line.contains("serving"))
        .expect("a serving line");
    let start = line.find("127.0.0.1:").expect("a loopback listener");
    line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

/// What grpc_tls_call.py reported: `Ok` or the code's name and details.
fn grpcio_tls_call(python: &Path, target: &str, ca: &Path) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_tls_call.py");
    let request = CheckReadinessRequest { path: ".".into() }.encode_to_vec();
    let hex: String = request.iter().map(|b| format!("{b:02x}")).collect();
    let output = output_with_input(
        Command::new(python)
            .arg(script)
            .args([
                target,
                "CheckReadiness",
                "--server-name",
                SERVER_NAME,
                "--ca",
            ])
            .arg(ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
        hex.as_bytes(),
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    match stdout.trim_end().strip_prefix("OK") {
        Some(_) => Ok(()),
        None => Err(stdout),
    }
}

/// `openssl s_client` to `address` with `extra` options, sending `input`;
/// its output and whether it succeeded.
fn s_client(address: &str, ca: &Path, extra: &[&str], input: &str) -> (bool, String) {
    let output = output_with_input(
        Command::new("openssl")
            .args(["s_client", "-connect", address, "-servername", SERVER_NAME])
            .arg("-CAfile")
            .arg(ca)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        input.as_bytes(),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The serial number of the certificate the server at `address` presents.
fn served_serial(address: &str, ca: &Path) -> String {
    let (_, session) = s_client(address, ca, &["-showcerts"], "");
    let begin = session
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate served:\n{session}"));
    let end = session[begin..].find("-----END CERTIFICATE-----").unwrap() + begin + 25;
    let output = output_with_input(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial"])
            .stdout(Stdio::piped()),
        &session.as_bytes()[begin..end],
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn grpcio_calls_over_tls_on_tcp_and_on_a_unix_socket() {
    // Why: a runner reachable over the network must be reachable only
    // through TLS, by the clients operators use; on a Unix socket the
    // :authority rewriting must apply to the decrypted stream.
    let test = "grpcio_calls_over_tls_on_tcp_and_on_a_unix_socket";
    if !openssl_available(test) {
        return;
    }
    let Some(python) = test_python(test) else {
        return;
    };
    let ca = TestCa::new();
    let (certificate, key) = ca.server_key_pair("server", 1);
    let runner = TestRunner::start(tls_server(inline_tls(&certificate, &key)));
    let address = tcp_address(&runner);
    grpcio_tls_call(&python, &address, &ca.ca()).expect("CheckReadiness over TLS on TCP");
    let unix = format!("unix:{}", runner.socket.display());
    grpcio_tls_call(&python, &unix, &ca.ca()).expect("CheckReadiness over TLS on a Unix socket");
    // A plaintext client gets no HTTP/2 out of a TLS listener.
    let mut plain = TcpStream::connect(&address).unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"\0\0"),
        "HTTP/2 frames over plaintext: {answer:?}"
    );
}

#[tokio::test]
async fn tls12_and_the_configured_cipher_suites_are_served() {
    // Why: Buildbarn configurations restrict TLS 1.2 suites by Go's names;
    // TLS 1.2-only clients must still be served with those.
    let test = "tls12_and_the_configured_cipher_suites_are_served";
    if !openssl_available(test) {
        return;
    }
    let ca = TestCa::new();
    let (certificate, key) = ca.server_key_pair("server", 1);
    let mut tls = inline_tls(&certificate, &key);
    tls["cipherSuites"] = json!([
        "TLS_AES_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
    ]);
    let runner = TestRunner::start(tls_server(tls));
    let address = tcp_address(&runner);

    let (ok, session) = s_client(&address, &ca.ca(), &["-tls1_2", "-brief"], "");
    assert!(ok, "{session}");
    assert!(session.contains("TLSv1.2"), "{session}");
    assert!(
        session.contains("ECDHE-ECDSA-AES256-GCM-SHA384"),
        "{session}"
    );
    assert!(session.contains("Verification: OK"), "{session}");
    let (ok, session) = s_client(
        &address,
        &ca.ca(),
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "-brief",
        ],
        "",
    );
    assert!(
        !ok,
        "a suite left out of cipherSuites was negotiated:\n{session}"
    );
    let (ok, session) = s_client(&address, &ca.ca(), &["-tls1_3", "-brief"], "");
    assert!(ok && session.contains("TLSv1.3"), "{session}");
}

#[test]
fn cipher_suites_without_a_counterpart_stop_startup_naming_them() {
    // Why: a suite the runner cannot offer must not silently be dropped
    // from what the operator asked for.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runner.jsonnet");
    let text = json!({
        "buildDirectoryPath": "/worker/build",
        "grpcServers": [{
            "listenAddresses": ["127.0.0.1:0"],
            "authenticationPolicy": { "allow": {} },
            "tls": {
                "serverKeyPair": { "inline": { "certificate": "C", "privateKey": "K" } },
                "cipherSuites": ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"],
            },
        }],
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let output = Command::new(BIN).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("grpcServers[0].tls.cipherSuites[1]")
            && stderr.contains("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
        "{stderr}"
    );
}

#[test]
fn a_key_pair_that_does_not_load_stops_startup_naming_the_server() {
    // Why: a runner that cannot serve TLS must not start listening as if
    // it could.
    let test = "a_key_pair_that_does_not_load_stops_startup_naming_the_server";
    if !openssl_available(test) {
        return;
    }
    let ca = TestCa::new();
    let (certificate, _) = ca.server_key_pair("server", 1);
    let (_, other_key) = ca.server_key_pair("other", 2);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runner.jsonnet");
    let text = json!({
        "buildDirectoryPath": dir.path(),
        "grpcServers": [{
            "listenAddresses": ["127.0.0.1:0"],
            "authenticationPolicy": { "allow": {} },
            "tls": inline_tls(&certificate, &other_key),
        }],
    });
    std::fs::write(&config, text.to_string()).unwrap();
    let output = Command::new(BIN).arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("grpcServers[0].tls") && stderr.contains("private key"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_key_pair_replaced_on_disk_is_served_after_the_refresh_interval() {
    // Why: certificates are rotated by replacing the files (cert-manager,
    // Vault); a runner must serve the new one without a restart, and a
    // half-written or broken pair must not take TLS down.
    let test = "a_key_pair_replaced_on_disk_is_served_after_the_refresh_interval";
    if !openssl_available(test) {
        return;
    }
    let ca = TestCa::new();
    let (certificate, key) = ca.server_key_pair("served", 1);
    let tls = json!({ "serverKeyPair": { "files": {
        "certificatePath": certificate,
        "privateKeyPath": key,
        "refreshInterval": "0.2s",
    } } });
    let runner = TestRunner::start(tls_server(tls));
    let address = tcp_address(&runner);
    assert_eq!(served_serial(&address, &ca.ca()), "serial=01");

    // A broken certificate file: logged, and the loaded pair kept.
    std::fs::write(&certificate, "not PEM").unwrap();
    eventually(
        "the failed reload is logged",
        Duration::from_secs(20),
        || {
            runner
                .log()
                .iter()
                .any(|line| line.contains("cannot reload the TLS key pair"))
        },
    )
    .await;
    assert_eq!(served_serial(&address, &ca.ca()), "serial=01");

    let (new_certificate, new_key) = ca.server_key_pair("next", 2);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_certificate, &certificate).unwrap();
    eventually(
        "the new pair is logged as loaded",
        Duration::from_secs(20),
        || {
            runner
                .log()
                .iter()
                .any(|line| line.contains("TLS key pair reloaded"))
        },
    )
    .await;
    assert_eq!(served_serial(&address, &ca.ca()), "serial=02");
}

/// Seconds since the epoch of a date `openssl x509` prints
/// (`notAfter=Dec  6 20:00:00 2026 GMT`), by GNU date.
fn epoch_seconds(openssl_date: &str) -> f64 {
    let (_, date) = openssl_date.trim().split_once('=').unwrap();
    let output = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The value of the sample of `family` for the test certificate.
fn certificate_sample(exposition: &str, family: &str) -> f64 {
    let series = format!("{family}{{certificate_usage=\"server\",dns_name=\"{SERVER_NAME}\"}} ");
    let line = exposition
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{exposition}"));
    line.trim().parse().unwrap()
}

#[tokio::test]
async fn expiry_metrics_hold_the_served_certificate_dates_and_diagnostics_serve_https() {
    // Why: Buildbarn's certificate expiry alerts read these series by
    // name and labels; and a diagnostics port with `tls` must speak it.
    let test = "expiry_metrics_hold_the_served_certificate_dates_and_diagnostics_serve_https";
    if !openssl_available(test) {
        return;
    }
    let ca = TestCa::new();
    let (certificate, key) = ca.server_key_pair("server", 1);
    let mut config = tls_server(inline_tls(&certificate, &key));
    merge(&mut config, diagnostics_on_loopback());
    merge(
        &mut config,
        json!({ "global": { "diagnosticsHttpServer": { "httpServers": [{
            "tls": inline_tls(&certificate, &key),
        }] } } }),
    );
    let runner = TestRunner::start(config);
    let diagnostics = diagnostics_address(&runner);
    let (ok, answer) = s_client(
        &diagnostics,
        &ca.ca(),
        &["-quiet", "-alpn", "http/1.1"],
        "GET /metrics HTTP/1.1\r\nHost: runner\r\nConnection: close\r\n\r\n",
    );
    assert!(ok && answer.contains("HTTP/1.1 200 OK"), "{answer}");

    // Prometheus's own checker accepts the exposition with them.
    // s_client writes the server's bytes to stdout, first in `answer`,
    // and its own diagnostics, which start with `depth=`, after them.
    let exposition = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let exposition = match exposition.find("\ndepth=") {
        Some(end) => &exposition[..=end],
        None => exposition,
    };
    let promtool = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/promtool");
    if !promtool.exists() {
        skip(
            test,
            "its promtool check: no target/tools/promtool (run tests/tools/install-promtool)",
        );
    } else {
        let output = output_with_input(
            Command::new(&promtool)
                .args(["check", "metrics"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            exposition.as_bytes(),
        );
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let not_before = openssl(
        ca.dir.path(),
        &["x509", "-noout", "-startdate", "-in", "server.pem"],
    );
    let not_after = openssl(
        ca.dir.path(),
        &["x509", "-noout", "-enddate", "-in", "server.pem"],
    );
    assert_eq!(
        certificate_sample(&answer, "buildbarn_tls_certificate_not_before_time_seconds"),
        epoch_seconds(&not_before)
    );
    assert_eq!(
        certificate_sample(&answer, "buildbarn_tls_certificate_not_after_time_seconds"),
        epoch_seconds(&not_after)
    );
}

/// Reads HTTP/2 frames from `stream` until a GOAWAY; returns its error
/// code, or `None` if the connection closed without one.
fn read_until_goaway(stream: &mut TcpStream) -> Option<u32> {
    std::iter::from_fn(|| next_frame(stream))
        .find(|(kind, _)| *kind == GOAWAY)
        .map(|(_, payload)| u32::from_be_bytes(payload[4..8].try_into().unwrap()))
}

#[tokio::test]
async fn a_connection_idle_beyond_max_connection_idle_gets_goaway() {
    // Why: grpc-go's maxConnectionIdle, which bb_runner configurations
    // set to shed connections nobody uses, must act the same here.
    let config = json!({ "grpcServers": [{
        "listenAddresses": ["127.0.0.1:0"],
        "keepaliveParameters": { "maxConnectionIdle": "0.5s" },
    }] });
    let runner = TestRunner::start(config);
    let mut stream = raw_http2(&tcp_address(&runner));
    assert_eq!(read_until_goaway(&mut stream), Some(0), "GOAWAY(NO_ERROR)");
}

/// Connects to `address`, sends the HTTP/2 preface and an empty SETTINGS,
/// and returns the stream (reads time out after 30 s).
fn raw_http2(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    stream
}

/// The next HTTP/2 frame: type and payload; `None` at end of stream.
fn next_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).ok()?;
    let length =
        (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).ok()?;
    Some((header[3], payload))
}

const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const SETTINGS: u8 = 0x4;
const WINDOW_UPDATE: u8 = 0x8;

#[tokio::test]
async fn an_unanswered_server_ping_closes_the_connection() {
    // Why: keepaliveParameters.time and .timeout detect clients that are
    // gone without closing (a dead peer behind a NAT); such a connection
    // must not be kept.
    let config = json!({ "grpcServers": [{
        "listenAddresses": ["127.0.0.1:0"],
        "keepaliveParameters": { "time": "1s", "timeout": "1s" },
    }] });
    let runner = TestRunner::start(config);
    let mut stream = raw_http2(&tcp_address(&runner));
    let mut pinged = false;
    while let Some((kind, _)) = next_frame(&mut stream) {
        pinged |= kind == PING;
    }
    assert!(pinged, "the server sent a PING before closing");
}

#[tokio::test]
async fn a_connection_older_than_max_connection_age_gets_goaway() {
    // Why: maxConnectionAge makes clients reconnect now and then (to be
    // balanced again); it must send the GOAWAY grpc-go sends.
    let config = json!({ "grpcServers": [{
        "listenAddresses": ["127.0.0.1:0"],
        "keepaliveParameters": { "maxConnectionAge": "0.5s", "maxConnectionAgeGrace": "1s" },
    }] });
    let runner = TestRunner::start(config);
    let mut stream = raw_http2(&tcp_address(&runner));
    assert_eq!(read_until_goaway(&mut stream), Some(0), "GOAWAY(NO_ERROR)");
}

#[tokio::test]
async fn window_sizes_are_announced_and_health_reports_the_configured_service() {
    // Why: initialWindowSizeBytes and initialConnWindowSizeBytes tune
    // throughput of large messages; healthCheckService is what load
    // balancers' health checks ask for by name.
    let config = json!({ "grpcServers": [{
        "listenAddresses": ["127.0.0.1:0"],
        "initialWindowSizeBytes": 1_048_576,
        "initialConnWindowSizeBytes": 4_194_304,
        "healthCheckService": "runner-pool-a",
    }] });
    let runner = TestRunner::start(config);
    let mut stream = raw_http2(&tcp_address(&runner));
    let (kind, settings) = next_frame(&mut stream).expect("the server's SETTINGS");
    assert_eq!(kind, SETTINGS);
    let initial_window = settings
        .chunks(6)
        .find(|setting| setting[..2] == [0, 4])
        .map(|setting| u32::from_be_bytes(setting[2..].try_into().unwrap()));
    assert_eq!(initial_window, Some(1_048_576), "{settings:?}");
    let update = std::iter::from_fn(|| next_frame(&mut stream))
        .find_map(|(kind, payload)| (kind == WINDOW_UPDATE).then_some(payload))
        .expect("a WINDOW_UPDATE");
    // The connection window starts at 65535 and is raised to the size.
    assert_eq!(
        u32::from_be_bytes(update[..4].try_into().unwrap()),
        4_194_304 - 65_535
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(runner.channel().await);
    for service in ["runner-pool-a", "buildbarn.runner.Runner"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
}
