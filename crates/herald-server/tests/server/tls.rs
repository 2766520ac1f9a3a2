//! TLS (`[tls]`): the connection layer in process (client certificates and
//! their identity in request extensions, plain HTTP, a stalled handshake,
//! reloads), then the real binary over HTTPS with the SDK, the CLI, reqwest
//! (HTTP/1.1 and HTTP/2), curl and Python httpx; certificate rotation while
//! clients stay connected; mTLS accepted and refused.
//!
//! Certificates are made here with rcgen: a CA, a server certificate for
//! `localhost` and 127.0.0.1, client certificates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers; clippy only exempts #[test] functions themselves"
)]

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use herald_client::{Client, Event, From, TopicOptions};
use herald_server::config::{ClientAuth, ConnectionOptions, TlsOptions};
use herald_server::tls::{PeerCertificate, Tls, TlsMetrics};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::stdout;
use crate::support::{STARTUP_TIMEOUT, TestServer, herald, run_to_exit, serve};

/// How long a test waits for something that should happen soon.
const PROMPTLY: Duration = Duration::from_secs(20);

/// A test CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key (PEM) for `names` (DNS names or IP
    /// addresses), with subject O=Herald tests, CN=`common_name`.
    fn leaf(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Herald tests");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate to `dir/<name>` and returns the path.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.pem()).unwrap();
        path
    }
}

/// A client certificate and key written to files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

impl Identity {
    fn new(ca: &Ca, dir: &Path, common_name: &str) -> Self {
        let (cert_pem, key_pem) = ca.leaf(common_name, &[]);
        let (cert, key) = (
            dir.join(format!("{common_name}.pem")),
            dir.join(format!("{common_name}.key")),
        );
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        Self { cert, key }
    }

    fn pem(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(&self.cert).unwrap(),
            std::fs::read(&self.key).unwrap(),
        )
    }
}

/// The server's TLS files in a temp dir.
struct Files {
    dir: tempfile::TempDir,
    options: TlsOptions,
}

impl Files {
    fn new(ca: &Ca, client_auth: ClientAuth, client_ca: Option<&Ca>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut options = TlsOptions {
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server.key"),
            client_auth,
            ..TlsOptions::default()
        };
        if let Some(client_ca) = client_ca {
            options.client_ca_file = client_ca.write(dir.path(), "clients.pem");
        }
        let files = Self { dir, options };
        files.write_server(ca);
        files
    }

    /// (Re)writes the server certificate and key, from `ca`.
    fn write_server(&self, ca: &Ca) {
        let (cert, key) = ca.leaf("herald", &["localhost", "127.0.0.1"]);
        std::fs::write(&self.options.cert_file, cert).unwrap();
        std::fs::write(&self.options.key_file, key).unwrap();
    }
}

/// An HTTPS client trusting only `ca`, presenting `identity` if given.
fn https_client(ca: &Ca, identity: Option<&Identity>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()]);
    if let Some(identity) = identity {
        let (mut pem, key) = identity.pem();
        pem.push(b'\n');
        pem.extend(key);
        builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

async fn text(client: &reqwest::Client, url: &str) -> Result<String, reqwest::Error> {
    client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

// ---------------------------------------------------------------- in process

/// `GET /peer`: the connection's client identity, as a request sees it.
async fn peer(certificate: Option<Extension<PeerCertificate>>) -> String {
    match certificate {
        Some(Extension(peer)) => format!(
            "cn={} dns={}",
            peer.subject_common_name.unwrap_or_default(),
            peer.dns_names.join(",")
        ),
        None => "anonymous".to_owned(),
    }
}

/// The connection layer alone (`connections::serve` with TLS) on port 0,
/// serving `/peer`.
struct Listener {
    addr: SocketAddr,
    tls: Arc<Tls>,
    metrics: TlsMetrics,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Listener {
    async fn start(options: &TlsOptions) -> Self {
        let metrics = TlsMetrics::default();
        let tls = Tls::load(options, metrics.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = Router::new().route("/peer", get(peer));
        let task = tokio::spawn(herald_server::connections::serve(
            listener,
            app,
            ConnectionOptions::default(),
            Some(Arc::clone(&tls)),
            stop.clone(),
        ));
        Self {
            addr,
            tls,
            metrics,
            stop,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/peer", self.addr.port())
    }

    fn metrics(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn given_required_client_auth_when_client_presents_a_ca_signed_certificate_should_put_its_identity_in_request_extensions()
 {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new(&server_ca, ClientAuth::Required, Some(&client_ca));
    let listener = Listener::start(&files.options).await;
    let (cert, key) = client_ca.leaf("billing-service", &["billing.internal"]);
    std::fs::write(files.dir.path().join("billing.pem"), cert).unwrap();
    std::fs::write(files.dir.path().join("billing.key"), key).unwrap();
    let identity = Identity {
        cert: files.dir.path().join("billing.pem"),
        key: files.dir.path().join("billing.key"),
    };

    let seen = text(&https_client(&server_ca, Some(&identity)), &listener.url()).await;

    assert_eq!(seen.unwrap(), "cn=billing-service dns=billing.internal");
    listener.stop().await;
}

#[tokio::test]
async fn given_required_client_auth_when_client_has_no_certificate_or_one_of_another_ca_should_refuse_it()
 {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new(&server_ca, ClientAuth::Required, Some(&client_ca));
    let listener = Listener::start(&files.options).await;
    let stranger = Identity::new(&Ca::new("another CA"), files.dir.path(), "intruder");

    let without = text(&https_client(&server_ca, None), &listener.url()).await;
    let foreign = text(&https_client(&server_ca, Some(&stranger)), &listener.url()).await;

    assert!(without.is_err(), "{without:?}");
    assert!(foreign.is_err(), "{foreign:?}");
    listener.stop().await;
}

#[tokio::test]
async fn given_optional_client_auth_should_serve_clients_with_and_without_a_certificate() {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new(&server_ca, ClientAuth::Optional, Some(&client_ca));
    let listener = Listener::start(&files.options).await;
    let identity = Identity::new(&client_ca, files.dir.path(), "reporting");

    let anonymous = text(&https_client(&server_ca, None), &listener.url()).await;
    let known = text(&https_client(&server_ca, Some(&identity)), &listener.url()).await;

    assert_eq!(anonymous.unwrap(), "anonymous");
    assert_eq!(known.unwrap(), "cn=reporting dns=");
    listener.stop().await;
}

#[tokio::test]
async fn given_tls_listener_when_a_client_sends_plain_http_should_answer_400_tls_required_and_close()
 {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let listener = Listener::start(&files.options).await;
    let mut tcp = TcpStream::connect(listener.addr).await.unwrap();

    tcp.write_all(b"GET /peer HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();

    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\"code\":\"tls_required\""), "{answer}");
    assert!(
        listener
            .metrics()
            .contains("herald_tls_handshake_failures_total{reason=\"plaintext\"} 1")
    );
    listener.stop().await;
}

#[tokio::test]
async fn given_tls_listener_when_a_client_never_starts_the_handshake_should_close_it() {
    let ca = Ca::new("server CA");
    let mut files = Files::new(&ca, ClientAuth::None, None);
    files.options.handshake_timeout_ms = NonZeroU64::new(100).unwrap();
    let listener = Listener::start(&files.options).await;
    let mut tcp = TcpStream::connect(listener.addr).await.unwrap();

    // Bounded only so that a regression fails instead of hanging.
    let read = tokio::time::timeout(PROMPTLY, tcp.read(&mut [0u8; 16]))
        .await
        .expect("the server should close a silent connection");

    assert_eq!(read.unwrap(), 0, "closed without an answer");
    assert!(
        listener
            .metrics()
            .contains("herald_tls_handshake_failures_total{reason=\"timeout\"} 1")
    );
    listener.stop().await;
}

#[tokio::test]
async fn given_rotated_files_when_reloaded_should_serve_new_connections_the_new_certificate_and_keep_open_ones()
 {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = Files::new(&old_ca, ClientAuth::None, None);
    let listener = Listener::start(&files.options).await;
    let connected = https_client(&old_ca, None);
    assert_eq!(
        text(&connected, &listener.url()).await.unwrap(),
        "anonymous"
    );

    assert!(!listener.tls.reload(false), "nothing changed yet");
    files.write_server(&new_ca);
    assert!(listener.tls.reload(false));

    let fresh_new = text(&https_client(&new_ca, None), &listener.url()).await;
    let fresh_old = text(&https_client(&old_ca, None), &listener.url()).await;
    let reused = text(&connected, &listener.url()).await;
    assert_eq!(fresh_new.unwrap(), "anonymous");
    assert!(
        fresh_old.is_err(),
        "a new connection gets the new certificate"
    );
    assert_eq!(reused.unwrap(), "anonymous", "the open connection goes on");
    listener.stop().await;
}

#[tokio::test]
async fn given_a_bad_pem_or_a_mismatched_key_when_reloaded_should_keep_the_previous_certificate() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let listener = Listener::start(&files.options).await;

    std::fs::write(
        &files.options.cert_file,
        "-----BEGIN CERTIFICATE-----\nnope\n",
    )
    .unwrap();
    assert!(!listener.tls.reload(false), "a bad file is not loaded");
    assert!(!listener.tls.reload(false), "nor tried again unchanged");
    let other_key = ca.leaf("other", &["localhost"]).1;
    files.write_server(&ca);
    std::fs::write(&files.options.key_file, other_key).unwrap();
    assert!(
        !listener.tls.reload(false),
        "a key of another certificate is not loaded"
    );

    let served = text(&https_client(&ca, None), &listener.url()).await;
    assert_eq!(served.unwrap(), "anonymous");
    let metrics = listener.metrics();
    assert!(
        metrics.contains("herald_tls_reloads_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
    listener.stop().await;
}

#[test]
fn given_missing_or_mismatched_files_when_loaded_should_fail_naming_the_file() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let mut missing = files.options.clone();
    missing.key_file = files.dir.path().join("absent.key");
    std::fs::write(&files.options.key_file, ca.leaf("other", &[]).1).unwrap();

    let absent = Tls::load(&missing, TlsMetrics::default()).unwrap_err();
    let mismatched = Tls::load(&files.options, TlsMetrics::default()).unwrap_err();

    assert!(absent.to_string().contains("tls.key_file"), "{absent}");
    assert!(absent.to_string().contains("absent.key"), "{absent}");
    assert!(
        matches!(mismatched, herald_server::tls::Error::CertifiedKey { .. }),
        "{mismatched}"
    );
}

#[test]
fn given_a_subject_with_several_attributes_should_read_its_common_name_and_dns_names() {
    let (cert, _) = Ca::new("CA").leaf("orders-worker", &["a.example", "b.example"]);
    let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();

    let peer = PeerCertificate::from_der(&der).unwrap();

    assert_eq!(peer.subject_common_name.as_deref(), Some("orders-worker"));
    assert_eq!(peer.dns_names, ["a.example", "b.example"]);
}

// ---------------------------------------------------------------- the binary

/// A `herald serve` with `[tls]` from `files`, and `extra` variables.
async fn start_tls_server(files: &Files, extra: &[(&str, &str)]) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    let options = &files.options;
    command
        .env("HERALD_TLS__CERT_FILE", &options.cert_file)
        .env("HERALD_TLS__KEY_FILE", &options.key_file);
    if !options.client_ca_file.as_os_str().is_empty() {
        command
            .env("HERALD_TLS__CLIENT_CA_FILE", &options.client_ca_file)
            .env(
                "HERALD_TLS__CLIENT_AUTH",
                match options.client_auth {
                    ClientAuth::Optional => "optional",
                    _ => "required",
                },
            );
    }
    command.envs(extra.iter().copied());
    TestServer::spawn(dir, command).await
}

fn https_url(server: &TestServer, path: &str) -> String {
    format!("https://localhost:{}{path}", server.addr.port())
}

/// Waits until `/readyz` answers 200 over HTTPS.
async fn wait_ready(server: &TestServer, client: &reqwest::Client) {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(response) = client.get(https_url(server, "/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready over HTTPS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An SDK client of `server` over TLS, trusting `ca`.
async fn sdk(server: &TestServer, ca: &Ca) -> herald_client::Result<Client> {
    Client::builder(format!("https://127.0.0.1:{}", server.addr.port()))
        .ca_certificate(ca.pem())
        .retry(herald_client::RetryPolicy::none())
        .connect()
        .await
}

/// `herald <args> --server https://… --ca-cert <ca>`.
async fn cli(server: &TestServer, ca_file: &Path, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command
        .args(args)
        .args(["--server", &https_url(server, "")])
        .arg("--ca-cert")
        .arg(ca_file);
    run_to_exit(command).await
}

#[tokio::test]
async fn given_a_tls_server_when_used_by_the_sdk_should_publish_consume_subscribe_and_read() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let server = start_tls_server(&files, &[]).await;
    wait_ready(&server, &https_client(&ca, None)).await;
    let client = sdk(&server, &ca).await.unwrap();

    client
        .create_topic(TopicOptions::new("orders").partitions(2))
        .await
        .unwrap();
    let mut subscriber = client
        .subscribe("orders")
        .from(From::Earliest)
        .build()
        .await
        .unwrap();
    let unary = client
        .publish("orders", [Event::new("e-1", "/tls", "order.created")])
        .await
        .unwrap();
    let publisher = client.publisher("orders").build();
    let streamed = publisher
        .publish(Event::new("e-2", "/tls", "order.created"))
        .await
        .unwrap()
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(PROMPTLY, subscriber.next())
            .await
            .expect("an event in time")
            .expect("the subscriber is open")
            .unwrap();
        seen.push(event.event.id);
    }
    seen.sort();
    let (read, _) = client
        .read("orders", unary[0].partition, 0, 10)
        .await
        .unwrap();

    assert_eq!(seen, ["e-1", "e-2"]);
    assert!(read.iter().any(|event| event.event.id == "e-1"));
    assert_eq!(client.list_topics().await.unwrap().len(), 1);
    drop(streamed);
}

#[tokio::test]
async fn given_a_tls_server_when_called_over_http1_and_http2_should_answer_both() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let server = start_tls_server(&files, &[]).await;
    let negotiated = https_client(&ca, None);
    wait_ready(&server, &negotiated).await;
    let http1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .http1_only()
        .build()
        .unwrap();

    let created = http1
        .post(https_url(&server, "/v1/topics"))
        .json(&serde_json::json!({"name": "audit", "partitions": 1}))
        .send()
        .await
        .unwrap();
    let listed = negotiated
        .get(https_url(&server, "/v1/topics"))
        .send()
        .await
        .unwrap();

    assert_eq!(created.status(), 201);
    assert_eq!(created.version(), reqwest::Version::HTTP_11);
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    let body: Value = listed.json().await.unwrap();
    assert_eq!(body["topics"][0]["name"], "audit", "{body}");
}

#[tokio::test]
async fn given_a_tls_server_when_driven_by_the_cli_with_its_ca_should_create_publish_and_tail() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let ca_file = ca.write(files.dir.path(), "ca.pem");
    let server = start_tls_server(&files, &[]).await;
    wait_ready(&server, &https_client(&ca, None)).await;

    stdout(&cli(&server, &ca_file, &["topic", "create", "orders"]).await);
    for id in ["c-1", "c-2"] {
        let args = [
            "publish",
            "orders",
            "--type",
            "order.created",
            "--id",
            id,
            "--data",
            "{}",
        ];
        stdout(&cli(&server, &ca_file, &args).await);
    }
    let tailed = stdout(
        &cli(
            &server,
            &ca_file,
            &[
                "tail", "orders", "--from", "earliest", "--count", "2", "--output", "json",
            ],
        )
        .await,
    );

    let ids: Vec<String> = tailed
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].to_string())
        .collect();
    assert_eq!(ids, ["\"c-1\"", "\"c-2\""], "{tailed}");
}

#[tokio::test]
async fn given_a_tls_server_when_called_by_curl_and_python_httpx_with_the_ca_should_answer() {
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let ca_file = ca.write(files.dir.path(), "ca.pem");
    let server = start_tls_server(&files, &[]).await;
    wait_ready(&server, &https_client(&ca, None)).await;
    let url = https_url(&server, "/v1/topics");
    let mut standard_clients = 0;

    let curl = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--cacert"])
        .arg(&ca_file)
        .arg(&url)
        .output()
        .await;
    if let Ok(curl) = curl {
        assert!(
            curl.status.success(),
            "{}",
            String::from_utf8_lossy(&curl.stderr)
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&curl.stdout).unwrap()["topics"],
            serde_json::json!([])
        );
        standard_clients += 1;
    }
    // httpx is installed by .ci/run (pinned); skipped where it is missing.
    let script = "import sys, httpx\n\
        r = httpx.get(sys.argv[1], verify=sys.argv[2])\n\
        print(r.status_code, r.http_version, r.text)";
    let python = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(&url)
        .arg(&ca_file)
        .output()
        .await;
    if let Ok(python) = python
        && !String::from_utf8_lossy(&python.stderr).contains("No module named 'httpx'")
    {
        let stdout = String::from_utf8_lossy(&python.stdout);
        assert!(
            stdout.starts_with("200 HTTP/1.1 {\"topics\":[]}"),
            "{stdout} {}",
            String::from_utf8_lossy(&python.stderr)
        );
        standard_clients += 1;
    }
    assert!(standard_clients > 0, "neither curl nor python3 ran");
}

#[tokio::test]
async fn given_a_tls_server_when_a_client_speaks_plain_http_or_trusts_another_ca_should_refuse_it()
{
    let ca = Ca::new("server CA");
    let files = Files::new(&ca, ClientAuth::None, None);
    let wrong_ca_file = Ca::new("another CA").write(files.dir.path(), "wrong.pem");
    let server = start_tls_server(&files, &[]).await;
    wait_ready(&server, &https_client(&ca, None)).await;

    let plain = reqwest::get(server.url("/v1/topics")).await.unwrap();
    let plain_status = plain.status();
    let plain_body: Value = plain.json().await.unwrap();
    let sdk_wrong_ca = sdk(&server, &Ca::new("another CA")).await;
    let sdk_plain = Client::builder(format!("http://{}", server.addr))
        .retry(herald_client::RetryPolicy::none())
        .connect()
        .await
        .unwrap()
        .list_topics()
        .await;
    let cli_wrong_ca = cli(&server, &wrong_ca_file, &["topic", "list"]).await;

    assert_eq!(plain_status, 400);
    assert_eq!(plain_body["code"], "tls_required", "{plain_body}");
    assert!(sdk_wrong_ca.is_err(), "an untrusted certificate");
    assert!(sdk_plain.is_err(), "h2c to a TLS port");
    assert_eq!(cli_wrong_ca.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&cli_wrong_ca.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert!(stderr.contains("--ca-cert"), "says what to do: {stderr}");
}

/// Waits until a new client trusting only `ca` gets an answer.
async fn wait_until_trusted_by(server: &TestServer, ca: &Ca) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while text(&https_client(ca, None), &https_url(server, "/healthz"))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never served a certificate of the new CA"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn given_connected_sdk_clients_when_the_certificate_is_replaced_by_one_of_a_new_ca_should_keep_serving_them()
 {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = Files::new(&old_ca, ClientAuth::None, None);
    let server = start_tls_server(&files, &[("HERALD_TLS__RELOAD_INTERVAL_MS", "100")]).await;
    wait_ready(&server, &https_client(&old_ca, None)).await;
    let old_client = sdk(&server, &old_ca).await.unwrap();
    old_client
        .create_topic(TopicOptions::new("orders"))
        .await
        .unwrap();
    let mut subscriber = old_client
        .subscribe("orders")
        .from(From::Earliest)
        .build()
        .await
        .unwrap();
    old_client
        .publish("orders", [Event::new("before", "/tls", "t")])
        .await
        .unwrap();
    let first = tokio::time::timeout(PROMPTLY, subscriber.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.event.id, "before");

    files.write_server(&new_ca);
    wait_until_trusted_by(&server, &new_ca).await;
    let new_client = sdk(&server, &new_ca).await.unwrap();
    new_client
        .publish("orders", [Event::new("after-new", "/tls", "t")])
        .await
        .unwrap();
    // The old client's connections were opened before the rotation: they
    // go on (a new connection of the old client would be refused).
    old_client
        .publish("orders", [Event::new("after-old", "/tls", "t")])
        .await
        .unwrap();
    let mut later = Vec::new();
    while later.len() < 2 {
        let event = tokio::time::timeout(PROMPTLY, subscriber.next())
            .await
            .expect("the old subscriber still receives")
            .unwrap()
            .unwrap();
        later.push(event.event.id);
    }

    assert_eq!(later, ["after-new", "after-old"]);
    assert!(
        sdk(&server, &old_ca).await.is_err(),
        "new connections get the new certificate"
    );
}

#[tokio::test]
async fn given_a_tls_server_when_sent_sighup_after_the_files_changed_should_reload_them() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = Files::new(&old_ca, ClientAuth::None, None);
    // Polling an hour apart: only the signal can explain a reload.
    let server = start_tls_server(&files, &[("HERALD_TLS__RELOAD_INTERVAL_MS", "3600000")]).await;
    wait_ready(&server, &https_client(&old_ca, None)).await;

    files.write_server(&new_ca);
    server.signal("HUP").await;

    wait_until_trusted_by(&server, &new_ca).await;
    let (status, stderr, _dir) = {
        server.signal("TERM").await;
        server.wait().await
    };
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("Reloaded the TLS certificate"), "{stderr}");
}

#[tokio::test]
async fn given_required_client_certificates_should_accept_the_sdk_and_cli_with_one_and_refuse_them_without()
 {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new(&server_ca, ClientAuth::Required, Some(&client_ca));
    let ca_file = server_ca.write(files.dir.path(), "ca.pem");
    let identity = Identity::new(&client_ca, files.dir.path(), "ops");
    let server = start_tls_server(&files, &[]).await;
    wait_ready(&server, &https_client(&server_ca, Some(&identity))).await;
    let endpoint = format!("https://127.0.0.1:{}", server.addr.port());
    let (cert, key) = identity.pem();

    let with = Client::builder(&endpoint)
        .ca_certificate(server_ca.pem())
        .identity(cert, key)
        .connect()
        .await
        .unwrap();
    let created = with.create_topic(TopicOptions::new("payments")).await;
    let without = match sdk(&server, &server_ca).await {
        Ok(client) => client.list_topics().await.map(drop),
        Err(error) => Err(error),
    };
    let cli_with = {
        let dir = tempfile::tempdir().unwrap();
        let mut command = herald(dir.path());
        command
            .args(["topic", "list", "--server", &https_url(&server, "")])
            .env("HERALD_CA_CERT", &ca_file)
            .env("HERALD_CLIENT_CERT", &identity.cert)
            .env("HERALD_CLIENT_KEY", &identity.key);
        run_to_exit(command).await
    };
    let cli_without = cli(&server, &ca_file, &["topic", "list"]).await;

    assert_eq!(created.unwrap().name, "payments");
    assert!(without.is_err(), "no client certificate: refused");
    assert!(stdout(&cli_with).contains("payments"));
    assert_eq!(cli_without.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&cli_without.stderr);
    assert!(
        stderr.contains("--client-cert"),
        "says what to do: {stderr}"
    );
}

#[tokio::test]
async fn given_tls_files_that_do_not_exist_when_serving_should_refuse_to_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command
        .env("HERALD_TLS__CERT_FILE", dir.path().join("missing.pem"))
        .env("HERALD_TLS__KEY_FILE", dir.path().join("missing.key"));

    let output = run_to_exit(command).await;

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read tls.cert_file") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn given_mtls_identities_when_a_client_presents_a_certificate_should_act_as_the_mapped_identity()
 {
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let files = Files::new(&server_ca, ClientAuth::Optional, Some(&client_ca));
    let billing = Identity::new(&client_ca, files.dir.path(), "billing");
    let stranger = Identity::new(&client_ca, files.dir.path(), "stranger");
    let config = files.dir.path().join("herald.toml");
    std::fs::write(
        &config,
        r#"
[auth]
bootstrap_key = "hrd_mtls_test_0123456789abcdef0123456789abcdef"

[[auth.mtls]]
name = "billing"
permissions = [{ actions = ["topics:read"], resources = ["payments"] }]
"#,
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let server = {
        let dir = tempfile::tempdir().unwrap();
        let mut command = serve(dir.path());
        let options = &files.options;
        command
            .args(["--config", &config])
            .env("HERALD_TLS__CERT_FILE", &options.cert_file)
            .env("HERALD_TLS__KEY_FILE", &options.key_file)
            .env("HERALD_TLS__CLIENT_CA_FILE", &options.client_ca_file)
            .env("HERALD_TLS__CLIENT_AUTH", "optional");
        TestServer::spawn(dir, command).await
    };
    let as_billing = https_client(&server_ca, Some(&billing));
    let as_stranger = https_client(&server_ca, Some(&stranger));
    let anonymous = https_client(&server_ca, None);
    wait_ready(&server, &anonymous).await;

    let whoami: Value = serde_json::from_str(
        &text(&as_billing, &https_url(&server, "/v1/auth/whoami"))
            .await
            .unwrap(),
    )
    .unwrap();
    let create = as_billing
        .post(https_url(&server, "/v1/topics"))
        .json(&serde_json::json!({"name": "payments"}))
        .send()
        .await
        .unwrap();
    let stranger_status = as_stranger
        .get(https_url(&server, "/v1/auth/whoami"))
        .send()
        .await
        .unwrap()
        .status();
    let anonymous_status = anonymous
        .get(https_url(&server, "/v1/topics"))
        .send()
        .await
        .unwrap()
        .status();

    assert_eq!(whoami["identity"], "cert:billing", "{whoami}");
    assert_eq!(create.status(), 403, "topics:read does not create topics");
    let problem: Value = create.json().await.unwrap();
    assert_eq!(problem["code"], "forbidden", "{problem}");
    assert_eq!(
        stranger_status, 401,
        "a certificate no auth.mtls entry names"
    );
    assert_eq!(anonymous_status, 401, "no certificate and no token");
}
