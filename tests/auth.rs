//! Who may call the runner, end to end: authentication policies and
//! authorizers on the real binary, called by real clients (the `exec` and
//! `watch` commands, Python's grpcio) as root and as uid 65534 through
//! `setpriv`; configurations refused at startup; the client-certificate
//! policy on certificates made by the `openssl` command line; and the
//! JMESPath library checked against Python's reference implementation.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{merge, output_with_input, TestRunner, BIN};
use rbe_runner::auth::client_certificate::{ClientCertificateConfig, ClientCertificatePolicy};
use rbe_runner::auth::jmespath::{Expression, ExpressionConfig};
use rbe_runner::proto::runner::CheckReadinessRequest;
use rustls_pki_types::UnixTime;
use serde_json::{json, Value};

/// The README's example: only uid 65534 may run actions; events are
/// readable by every local caller.
fn only_nobody_runs() -> Value {
    json!({
        "grpcServers": [{
            "authenticationPolicy": {
                "allow": null,
                "peerCredentialsJmespathExpression": { "expression": "{private: {uid: uid}}" },
            },
        }],
        "runAuthorizer": {
            "jmespathExpression": { "expression": "authenticationMetadata.private.uid == `65534`" },
        },
        "eventsAuthorizer": { "allow": {} },
        "listenPathMode": "0666",
    })
}

/// `command` run as uid and gid 65534 with no supplementary groups.
fn as_nobody(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    command
}

fn exec(mut command: Command, runner: &TestRunner) -> Output {
    command
        .arg("exec")
        .arg("--socket")
        .arg(&runner.socket)
        .arg("--build-dir")
        .arg(&runner.build_dir)
        .args(["--", "/bin/true"])
        .output()
        .expect("run rbe-runner exec")
}

fn logs(mut command: Command, runner: &TestRunner, action_id: &str) -> Output {
    command
        .arg("logs")
        .arg("--socket")
        .arg(&runner.socket)
        .arg("--no-follow")
        .arg(action_id)
        .output()
        .expect("run rbe-runner logs")
}

fn watch(mut command: Command, runner: &TestRunner) -> Output {
    command
        .arg("watch")
        .arg("--socket")
        .arg(&runner.socket)
        .arg("--no-follow")
        .output()
        .expect("run rbe-runner watch")
}

/// One CheckReadiness with Python's grpcio: `Ok(())` or the code's name.
fn python_check_readiness(mut command: Command, runner: &TestRunner) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_call.py");
    let mut child = command
        .arg(script)
        .arg(format!("unix:{}", runner.socket.display()))
        .arg("CheckReadiness")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run grpc_call.py");
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if stdout.starts_with("OK") {
        return Ok(());
    }
    assert!(
        stdout.starts_with("ERROR"),
        "grpc_call.py failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Err(stdout)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of the `grpc_server_handled_total` series with `code` and
/// `method`, 0 when absent.
fn handled(runner: &TestRunner, method: &str, code: &str) -> u64 {
    let (status, exposition) = common::http_get(&common::diagnostics_address(runner), "/metrics");
    assert_eq!(status, 200, "{exposition}");
    exposition
        .lines()
        .find(|line| {
            line.starts_with("grpc_server_handled_total{")
                && line.contains(&format!("grpc_code=\"{code}\""))
                && line.contains(&format!("grpc_method=\"{method}\""))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Why it matters: on the usual deployment (a Unix socket) this is what
/// keeps any other local user from running commands as the runner: the
/// same socket, reached by two users, runs actions for one only, while
/// both may watch what it does.
#[test]
fn only_uid_65534_may_run_actions_on_the_same_socket_while_both_may_watch() {
    const TEST: &str = "only_uid_65534_may_run_actions_on_the_same_socket_while_both_may_watch";
    if !common::running_as_root(TEST) {
        return;
    }
    let Some(python) = common::test_python(TEST) else {
        return;
    };
    let mut config = only_nobody_runs();
    merge(&mut config, common::diagnostics_on_loopback());
    let runner = TestRunner::start(config);
    // uid 65534 must reach the socket and write its action directory.
    for (path, mode) in [
        (runner.dir.path(), 0o755),
        (runner.build_dir.as_path(), 0o777),
    ] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let bin = PathBuf::from(BIN);

    let refused = exec(Command::new(&bin), &runner);
    assert!(!refused.status.success(), "root ran an action");
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("runAuthorizer"),
        "{stderr}"
    );
    let allowed = exec(as_nobody(&bin), &runner);
    assert!(
        allowed.status.success(),
        "uid 65534 could not run an action: {}",
        text(&allowed.stderr)
    );
    assert!(text(&allowed.stdout).contains("\"exitCode\":0"));

    // The same with gRPC C-core, on the other method runAuthorizer governs.
    let refused = python_check_readiness(Command::new(&python), &runner).unwrap_err();
    assert!(refused.contains("PERMISSION_DENIED"), "{refused}");
    python_check_readiness(as_nobody(&python), &runner).expect("uid 65534 may check readiness");

    for (who, command) in [("root", Command::new(&bin)), ("uid 65534", as_nobody(&bin))] {
        let watched = watch(command, &runner);
        assert!(
            watched.status.success(),
            "{who} could not watch: {}",
            text(&watched.stderr)
        );
    }
    let events = text(&watch(Command::new(&bin), &runner).stdout);
    assert!(events.contains("/bin/true"), "{events}");

    // Counted by their code, and logged with who was refused.
    assert_eq!(handled(&runner, "Run", "PermissionDenied"), 1);
    assert_eq!(handled(&runner, "CheckReadiness", "PermissionDenied"), 1);
    assert_eq!(handled(&runner, "Run", "OK"), 1);
    let log = runner.log().join("\n");
    assert!(
        log.contains("refused a call") && log.contains("uid 0 gid 0"),
        "{log}"
    );
}

/// Why: events tell what every action ran, and its output may hold
/// secrets; an operator may close both to callers who may not run actions,
/// and `watch` and `logs` must say why they failed.
#[test]
fn events_authorizer_deny_refuses_watch_and_logs_but_not_run() {
    let mut config = json!({ "eventsAuthorizer": { "deny": {} } });
    merge(&mut config, common::diagnostics_on_loopback());
    let runner = TestRunner::start(config);
    let bin = PathBuf::from(BIN);
    let watched = watch(Command::new(&bin), &runner);
    assert!(!watched.status.success(), "watch was allowed");
    let stderr = text(&watched.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("eventsAuthorizer"),
        "{stderr}"
    );
    let ran = exec(Command::new(&bin), &runner);
    assert!(ran.status.success(), "{}", text(&ran.stderr));
    // Refused before the action is even looked up: an unknown id would
    // otherwise be NOT_FOUND, as it is when the events are open.
    let followed = logs(Command::new(&bin), &runner, "no-such-action");
    assert!(!followed.status.success(), "logs was allowed");
    let stderr = text(&followed.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("eventsAuthorizer"),
        "{stderr}"
    );
    // Counted like every refused call, by the method and the code.
    assert_eq!(handled(&runner, "Subscribe", "PermissionDenied"), 1);
    assert_eq!(handled(&runner, "Follow", "PermissionDenied"), 1);
    let open = TestRunner::start(json!({}));
    let followed = logs(Command::new(&bin), &open, "no-such-action");
    let stderr = text(&followed.stderr);
    assert!(stderr.contains("NotFound"), "{stderr}");
}

async fn check_readiness(runner: &TestRunner) -> Result<(), tonic::Status> {
    runner
        .client()
        .await
        .check_readiness(CheckReadinessRequest::default())
        .await
        .map(|_| ())
}

fn runner_with_policy(policy: Value, run_authorizer: Value) -> TestRunner {
    let mut config = json!({
        "grpcServers": [{ "authenticationPolicy": { "allow": null } }],
        "runAuthorizer": run_authorizer,
    });
    merge(
        &mut config,
        json!({ "grpcServers": [{ "authenticationPolicy": policy }] }),
    );
    merge(&mut config, common::diagnostics_on_loopback());
    TestRunner::start(config)
}

/// Why: `deny` is how an operator closes a listener with a message for
/// whoever still calls it; the message must reach the client, and the
/// refusals must show in the metrics.
#[tokio::test]
async fn deny_answers_unauthenticated_with_its_message() {
    let runner = runner_with_policy(
        json!({ "deny": "this listener is closed; use /worker/runner" }),
        json!({ "allow": {} }),
    );
    let status = check_readiness(&runner).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "this listener is closed; use /worker/runner"
    );
    assert_eq!(handled(&runner, "CheckReadiness", "Unauthenticated"), 1);
}

/// Why: `any` and `all` compose policies as in Buildbarn: the first that
/// accepts wins, and `all` merges metadata that an authorizer then reads.
#[tokio::test]
async fn any_and_all_compose_as_in_buildbarn() {
    let any = runner_with_policy(
        json!({ "any": { "policies": [
            { "deny": "not this one" },
            { "peerCredentialsJmespathExpression": "{public: {uid: uid}}" },
        ] } }),
        json!({ "jmespathExpression": "authenticationMetadata.public.uid == `0`" }),
    );
    check_readiness(&any)
        .await
        .expect("the second policy accepts root");

    let all = runner_with_policy(
        json!({ "all": { "policies": [
            { "allow": { "public": { "team": "build" } } },
            { "peerCredentialsJmespathExpression": "{private: {uid: uid}}" },
        ] } }),
        json!({ "jmespathExpression":
            "authenticationMetadata.public.team == 'build' && authenticationMetadata.private.uid == `0`" }),
    );
    check_readiness(&all)
        .await
        .expect("both policies' metadata reach the authorizer");

    let all_refusing = runner_with_policy(
        json!({ "all": { "policies": [
            { "peerCredentialsJmespathExpression": "{private: {uid: uid}}" },
            { "deny": "the second policy refuses" },
        ] } }),
        json!({ "allow": {} }),
    );
    let status = check_readiness(&all_refusing).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("the second policy refuses"),
        "{status:?}"
    );
}

/// Why: peer credentials exist only on a Unix socket; a TCP caller must be
/// refused saying so, not authenticated as nobody in particular.
#[tokio::test]
async fn peer_credentials_refuse_a_tcp_caller() {
    let tcp = TestRunner::start(json!({
        "grpcServers": [{
            "listenAddresses": ["127.0.0.1:0"],
            "authenticationPolicy": {
                "allow": null,
                "peerCredentialsJmespathExpression": "{private: {uid: uid}}",
            },
        }],
    }));
    let address = tcp_address(&tcp);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .expect("connect over TCP");
    let status = rbe_runner::proto::runner::runner_client::RunnerClient::new(channel)
        .check_readiness(CheckReadinessRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status
            .message()
            .contains("not established over a UNIX socket"),
        "{status:?}"
    );
    // The Unix socket of the same server still authenticates.
    check_readiness(&tcp)
        .await
        .expect("root over the Unix socket");
}

/// The TCP address a runner logged in its "serving" line.
fn tcp_address(runner: &TestRunner) -> String {
    let line = runner
        .log()
        .into_iter()
        .find(|line| line.contains("serving"))
        .expect("a serving line");
    let start = line
        .find("127.0.0.1:")
        .expect("a TCP listener on 127.0.0.1");
    line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect()
}

/// Starts the runner on `config` (with a build directory and socket of its
/// own) and returns its stderr once it exited, which it must do by
/// itself: these configurations must stop startup.
fn startup_refused(config: Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut full = json!({
        "buildDirectoryPath": dir.path(),
        "grpcServers": [{
            "listenPaths": [dir.path().join("runner.sock")],
            "authenticationPolicy": { "allow": {} },
        }],
    });
    merge(&mut full, config);
    let path = dir.path().join("runner.jsonnet");
    std::fs::write(&path, full.to_string()).unwrap();
    let child = Command::new(BIN)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    let Ok(output) = receiver.recv_timeout(Duration::from_secs(60)) else {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("the runner started with a configuration it must refuse: {full}");
    };
    let output = output.unwrap();
    assert!(!output.status.success(), "exited successfully on {full}");
    text(&output.stderr)
}

/// Why: a configuration whose security the runner cannot honour must
/// stop it before it accepts a call, naming the field to fix.
#[test]
fn configurations_that_cannot_be_honoured_stop_startup() {
    let cases = [
        (
            json!({ "grpcServers": [{ "authenticationPolicy": { "jwt": {} } }] }),
            vec!["grpcServers[0].authenticationPolicy.jwt", "not supported"],
        ),
        (
            json!({ "grpcServers": [{ "authenticationPolicy": { "peerCredentialsJmespathExpression": {
                "expression": "uid == `65534`",
                "testVectors": [
                    { "input": { "uid": 65534, "groups": [65534] }, "expectedOutput": true },
                    { "input": { "uid": 0, "groups": [0] }, "expectedOutput": true },
                ],
            } } }] }),
            vec![
                "grpcServers[0].authenticationPolicy.peerCredentialsJmespathExpression.testVectors[1]",
                "expected true, got false",
            ],
        ),
        (
            json!({ "grpcServers": [{
                "tls": { "serverKeyPair": { "inline": {} } },
                "authenticationPolicy": { "peerCredentialsJmespathExpression": "{private: {uid: uid}}" },
            }] }),
            vec!["grpcServers[0].tls", "peerCredentialsJmespathExpression"],
        ),
        (
            json!({ "runAuthorizer": { "jmespathExpression": {
                "expression": "contains(files.allowed, authenticationMetadata.private.name)",
                "files": [{ "key": "allowed", "path": "/nonexistent/rbe-runner-allowed" }],
            } } }),
            vec!["runAuthorizer", "/nonexistent/rbe-runner-allowed"],
        ),
        (
            json!({ "runAuthorizer": { "instanceNamePrefix": { "allowedInstanceNamePrefixes": [""] } } }),
            vec!["runAuthorizer.instanceNamePrefix", "instance names"],
        ),
    ];
    for (mut config, words) in cases {
        if let Some(policy) = config
            .pointer_mut("/grpcServers/0/authenticationPolicy")
            .and_then(Value::as_object_mut)
        {
            policy.insert("allow".into(), Value::Null);
        }
        let stderr = startup_refused(config.clone());
        for word in words {
            assert!(
                stderr.contains(word),
                "{word:?} not in:\n{stderr}\nfor {config}"
            );
        }
    }
}

// Client certificates -----------------------------------------------------

/// Certificates made with the `openssl` command line in a temporary
/// directory: two CAs, and client certificates signed by them.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `None` (the test skipped) without the `openssl` command.
    fn new(test: &str) -> Option<Pki> {
        if Command::new("openssl").arg("version").output().is_err() {
            common::skip(test, "the openssl command is not installed");
            return None;
        }
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        for ca in ["ca", "other-ca"] {
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=rbe-runner test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        Some(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            text(&output.stderr)
        );
    }

    /// A key and signing request for `name`, and the extensions file of a
    /// certificate for `usage` (`clientAuth`, `serverAuth`) with `san` as
    /// its subject alternative names.
    fn request(&self, name: &str, san: &str, usage: &str) {
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ]);
        let extensions = format!(
            "[client]\nbasicConstraints=CA:FALSE\nextendedKeyUsage={usage}\nsubjectAltName={san}\n"
        );
        std::fs::write(self.path(&format!("{name}.ext")), extensions).unwrap();
    }

    /// A client certificate `name` signed by `ca`, valid for a day.
    fn client(&self, name: &str, ca: &str, san: &str) -> PathBuf {
        self.signed(name, ca, san, "clientAuth")
    }

    /// A certificate `name` for `usage`, signed by `ca`, valid for a day.
    fn signed(&self, name: &str, ca: &str, san: &str, usage: &str) -> PathBuf {
        self.request(name, san, usage);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "2",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-extensions",
            "client",
            "-out",
            &format!("{name}.pem"),
        ]);
        self.path(&format!("{name}.pem"))
    }

    /// A client certificate signed by `ca` that expired in 2020
    /// (`openssl ca` takes explicit start and end dates).
    fn expired_client(&self, name: &str, ca: &str, san: &str) -> PathBuf {
        self.request(name, san, "clientAuth");
        let dir = self.dir.path().display();
        std::fs::create_dir_all(self.path("issued")).unwrap();
        std::fs::write(self.path("index.txt"), "").unwrap();
        std::fs::write(self.path("serial"), "10\n").unwrap();
        let config = format!(
            "[ca]\ndefault_ca=test\n[test]\ndatabase={dir}/index.txt\nnew_certs_dir={dir}/issued\n\
             serial={dir}/serial\ndefault_md=sha256\npolicy=any\nunique_subject=no\n\
             [any]\ncommonName=supplied\n"
        );
        std::fs::write(self.path("ca.cnf"), config).unwrap();
        self.openssl(&[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            &format!("{ca}.pem"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{name}.csr"),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            &format!("{name}.ext"),
            "-extensions",
            "client",
            "-notext",
            "-out",
            &format!("{name}.pem"),
        ]);
        self.path(&format!("{name}.pem"))
    }

    fn der(&self, pem: &Path) -> Vec<u8> {
        let der = pem.with_extension("der");
        self.openssl(&[
            "x509",
            "-in",
            pem.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ]);
        std::fs::read(der).unwrap()
    }

    fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }
}

fn expression(text: &str) -> ExpressionConfig {
    ExpressionConfig {
        expression: text.to_owned(),
        ..ExpressionConfig::default()
    }
}

/// Why: a client certificate is the identity of a caller over TCP; each
/// way it can be wrong must be refused saying why, and a good one must
/// yield the metadata the operator extracts from its names.
#[test]
fn client_certificates_are_verified_against_the_policy_s_authorities() {
    const TEST: &str = "client_certificates_are_verified_against_the_policy_s_authorities";
    let Some(pki) = Pki::new(TEST) else {
        return;
    };
    let san = "DNS:worker-1.example.com,email:ci@example.com,URI:spiffe://example.com/worker";
    let good = pki.client("worker", "ca", san);
    let other_ca = pki.client("stranger", "other-ca", san);
    let expired = pki.expired_client("expired", "ca", san);
    let wrong_name = pki.client("laptop", "ca", "DNS:laptop.example.com");

    let policy = ClientCertificatePolicy::start(&ClientCertificateConfig {
        client_certificate_authorities: pki.pem("ca.pem"),
        validation: expression("!contains(dnsNames, 'laptop.example.com') && length(uris) == `1`"),
        metadata_extraction: expression(
            "{public: {dnsNames: dnsNames, emailAddresses: emailAddresses, uris: uris}}",
        ),
    })
    .expect("the policy starts");
    let now = UnixTime::now();

    let metadata = policy
        .authenticate(&[pki.der(&good)], now)
        .expect("a certificate of the CA with the right names");
    assert_eq!(
        metadata.to_value(),
        json!({"public": {
            "dnsNames": ["worker-1.example.com"],
            "emailAddresses": ["ci@example.com"],
            "uris": ["spiffe://example.com/worker"],
        }})
    );
    for (certificate, words) in [
        (None, "no TLS client certificate"),
        (
            Some(&other_ca),
            "not issued by any of clientCertificateAuthorities",
        ),
        (Some(&expired), "expired on"),
        (Some(&wrong_name), "fail validationJmespathExpression"),
    ] {
        let chain: Vec<Vec<u8>> = certificate.map(|pem| pki.der(pem)).into_iter().collect();
        let reason = policy.authenticate(&chain, now).unwrap_err();
        assert!(reason.contains(words), "{words:?} not in {reason:?}");
    }
}

/// One CheckReadiness over TLS with Python's grpcio, presenting
/// `certificate` (a `name.pem` with its `name.key`) if given: `Ok(())` or
/// what grpc_tls_call.py printed.
fn grpcio_tls_check_readiness(
    python: &Path,
    pki: &Pki,
    address: &str,
    certificate: Option<&Path>,
) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/grpc_tls_call.py");
    let mut command = Command::new(python);
    command
        .arg(script)
        .args([
            address,
            "CheckReadiness",
            "--server-name",
            "localhost",
            "--ca",
        ])
        .arg(pki.path("ca.pem"));
    if let Some(certificate) = certificate {
        command
            .arg("--cert")
            .arg(certificate)
            .arg("--key")
            .arg(certificate.with_extension("key"));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let stdout = text(&output.stdout);
    if stdout.starts_with("OK") {
        return Ok(());
    }
    assert!(
        stdout.starts_with("ERROR"),
        "grpc_tls_call.py failed: {stdout}{}",
        text(&output.stderr)
    );
    Err(stdout)
}

/// Why it matters: over TCP a client certificate is the caller's identity.
/// As in Buildbarn, the handshake only asks for one, so every wrong
/// certificate (none, another CA's, an expired one, one whose names fail
/// validation) completes the handshake and is told why with
/// UNAUTHENTICATED (a failed handshake would be UNAVAILABLE), while a good
/// one runs, its names reaching runAuthorizer as metadata.
#[test]
fn grpcio_over_tls_is_authenticated_by_its_client_certificate() {
    const TEST: &str = "grpcio_over_tls_is_authenticated_by_its_client_certificate";
    let Some(pki) = Pki::new(TEST) else {
        return;
    };
    let Some(python) = common::test_python(TEST) else {
        return;
    };
    pki.signed("server", "ca", "DNS:localhost", "serverAuth");
    let san = "DNS:worker-1.example.com,URI:spiffe://example.com/worker";
    let good = pki.client("worker", "ca", san);
    let other_ca = pki.client("stranger", "other-ca", san);
    let expired = pki.expired_client("expired", "ca", san);
    let wrong_name = pki.client("laptop", "ca", "DNS:laptop.example.com");
    let other_worker = pki.client(
        "worker-2",
        "ca",
        "DNS:worker-2.example.com,URI:spiffe://example.com/worker",
    );

    let mut config = json!({
        "grpcServers": [{
            "listenAddresses": ["127.0.0.1:0"],
            "tls": { "serverKeyPair": { "inline": {
                "certificate": pki.pem("server.pem"),
                "privateKey": pki.pem("server.key"),
            } } },
            "authenticationPolicy": {
                "allow": null,
                "tlsClientCertificate": {
                    "clientCertificateAuthorities": pki.pem("ca.pem"),
                    "validationJmespathExpression": {
                        "expression": "!contains(dnsNames, 'laptop.example.com') && length(uris) == `1`",
                    },
                    "metadataExtractionJmespathExpression": "{public: {dnsNames: dnsNames}}",
                },
            },
        }],
        "runAuthorizer": { "jmespathExpression":
            "contains(authenticationMetadata.public.dnsNames, 'worker-1.example.com')" },
    });
    merge(&mut config, common::diagnostics_on_loopback());
    let runner = TestRunner::start(config);
    let address = tcp_address(&runner);

    grpcio_tls_check_readiness(&python, &pki, &address, Some(&good))
        .expect("a certificate of the CA with the right names");
    for (certificate, words) in [
        (None, "no TLS client certificate"),
        (
            Some(&other_ca),
            "not issued by any of clientCertificateAuthorities",
        ),
        (Some(&expired), "expired on"),
        (Some(&wrong_name), "fail validationJmespathExpression"),
    ] {
        let refused =
            grpcio_tls_check_readiness(&python, &pki, &address, certificate.map(PathBuf::as_path))
                .expect_err(words);
        assert!(
            refused.starts_with("ERROR UNAUTHENTICATED") && refused.contains(words),
            "{words:?}: {refused}"
        );
    }
    let refused = grpcio_tls_check_readiness(&python, &pki, &address, Some(&other_worker))
        .expect_err("runAuthorizer allows worker-1 only");
    assert!(refused.starts_with("ERROR PERMISSION_DENIED"), "{refused}");

    assert_eq!(handled(&runner, "CheckReadiness", "Unauthenticated"), 4);
    assert_eq!(handled(&runner, "CheckReadiness", "PermissionDenied"), 1);
    assert_eq!(handled(&runner, "CheckReadiness", "OK"), 1);
    let log = runner.log().join("\n");
    assert!(log.contains("certificate subject \"CN=stranger\""), "{log}");
}

// The JMESPath library against Python's ---------------------------------

/// Why: Buildbarn's expressions are written and tested against Go's and
/// Python's JMESPath; the runner's library must give the same answers, or
/// a policy would mean something else here. Every test vector and example
/// of this suite, and the language features policies use, evaluated by
/// both.
#[test]
fn the_jmespath_library_agrees_with_python_s() {
    const TEST: &str = "the_jmespath_library_agrees_with_python_s";
    let Some(python) = common::test_python(TEST) else {
        return;
    };
    let metadata = json!({"authenticationMetadata": {"public": {"team": "build", "uid": 65534},
        "private": {"uid": 65534, "groups": [65534, 10]}}, "instanceName": ""});
    let peer = json!({"uid": 65534, "groups": [65534]});
    let certificate = json!({"dnsNames": ["worker-1.example.com", "b.example.org"],
        "emailAddresses": [], "uris": ["spiffe://example.com/worker"]});
    let cases = [
        ("{private: {uid: uid}}", peer.clone()),
        ("{public: {uid: uid, groups: groups}}", peer.clone()),
        ("uid == `65534`", peer.clone()),
        ("uid == `65534.0`", peer.clone()),
        ("contains(groups, `65534`)", peer.clone()),
        (
            "authenticationMetadata.private.uid == `65534`",
            metadata.clone(),
        ),
        (
            "authenticationMetadata.public.team == 'build' && instanceName == ''",
            metadata.clone(),
        ),
        (
            "authenticationMetadata.private.missing == `null`",
            metadata.clone(),
        ),
        ("authenticationMetadata.public", metadata.clone()),
        (
            "length(authenticationMetadata.private.groups) > `1`",
            metadata.clone(),
        ),
        (
            "!contains(dnsNames, 'laptop.example.com') && length(uris) == `1`",
            certificate.clone(),
        ),
        (
            "{public: {dnsNames: dnsNames, emailAddresses: emailAddresses, uris: uris}}",
            certificate.clone(),
        ),
        ("dnsNames[?starts_with(@, 'worker-')]", certificate.clone()),
        ("emailAddresses[0]", certificate.clone()),
        ("join(',', dnsNames)", certificate.clone()),
        ("`{}`", json!({})),
        ("`true`", json!({})),
        ("not_null(missing, uid)", peer.clone()),
        ("uid > `1000` || contains(groups, `0`)", peer.clone()),
        ("to_string(uid)", peer.clone()),
        ("uid == '65534'", peer.clone()),
        ("groups[*].to_string(@)", peer.clone()),
        ("!contains(groups, `0`)", peer),
        (
            "files.allowed",
            json!({"files": {"allowed": "alice\nbob\n"}}),
        ),
        (
            "contains(split_lines(files.allowed), 'bob')",
            json!({"files": {"allowed": "alice"}}),
        ),
    ];
    let mut lines = String::new();
    for (expression, input) in &cases {
        lines.push_str(&json!({"expression": expression, "input": input}).to_string());
        lines.push('\n');
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/jmespath_eval.py");
    let output = output_with_input(
        Command::new(python).arg(script).stdout(Stdio::piped()),
        lines.as_bytes(),
    );
    assert!(output.status.success());
    let answers: Vec<Value> = text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(answers.len(), cases.len());
    for ((text, input), python) in cases.iter().zip(answers) {
        let ours = Expression::start(&expression(text))
            .map_err(|err| err.to_string())
            .and_then(|expression| expression.search(input.as_object().unwrap().clone()));
        match (&ours, python.get("result"), python.get("error")) {
            (Ok(ours), Some(theirs), None) => assert!(
                rbe_runner::auth::jmespath::same_value(ours, theirs),
                "{text:?} on {input}: ours {ours}, Python's {theirs}"
            ),
            (Err(_), None, Some(_)) => {}
            _ => panic!("{text:?} on {input}: ours {ours:?}, Python's {python}"),
        }
    }
}
