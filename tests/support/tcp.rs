//! Layer-4 test peers on ephemeral loopback ports: TCP backends that answer
//! with their name, echo, or record every byte they receive; TLS backends
//! with certificates from a test CA made at start; a backend that reads the
//! PROXY header cutover sends with a small strict parser of its own (not
//! the crate's, so a test checks cutover against the specification rather
//! than against itself); and the client side of the same: PROXY headers and
//! a ClientHello as a real TLS client writes it. Every wait is bounded by
//! `WAIT`.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Upper bound on every wait of a test on a peer, and of a peer on a test.
pub const WAIT: Duration = Duration::from_secs(5);

/// What a backend does with one accepted connection; `name` is its own.
pub type Serve = Arc<dyn Fn(TcpStream, &'static str) -> BoxFuture<'static, ()> + Send + Sync>;

/// A TCP backend standing in for one cluster's ingress.
#[derive(Clone)]
pub struct TcpBackend {
    pub name: &'static str,
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl TcpBackend {
    /// A backend serving each connection with `serve`.
    pub async fn start(name: &'static str, serve: Serve) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Self {
            name,
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            open: Arc::default(),
        };
        let (accepted, open) = (backend.accepted.clone(), backend.open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                open.fetch_add(1, Ordering::Relaxed);
                let open = open.clone();
                let serve = serve.clone();
                tokio::spawn(async move {
                    serve(stream, name).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        backend
    }

    /// Writes its name and closes.
    pub async fn named(name: &'static str) -> Self {
        Self::start(
            name,
            serve(|mut stream, name| async move {
                _ = stream.write_all(name.as_bytes()).await;
            }),
        )
        .await
    }

    /// Echoes every byte until the client's FIN, then closes.
    pub async fn echo(name: &'static str) -> Self {
        Self::start(
            name,
            serve(|mut stream, _| async move {
                let (mut read, mut write) = stream.split();
                _ = tokio::io::copy(&mut read, &mut write).await;
                _ = write.shutdown().await;
            }),
        )
        .await
    }

    /// Writes its name and a newline, then echoes until the client's FIN.
    pub async fn greeting(name: &'static str) -> Self {
        Self::start(
            name,
            serve(|mut stream, name| async move {
                if stream
                    .write_all(format!("{name}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                let (mut read, mut write) = stream.split();
                _ = tokio::io::copy(&mut read, &mut write).await;
                _ = write.shutdown().await;
            }),
        )
        .await
    }

    /// Reads each connection to its end, reports the bytes, then writes its
    /// name and closes.
    pub async fn recorder(name: &'static str) -> (Self, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (report, received) = mpsc::unbounded_channel();
        let backend = Self::start(
            name,
            serve(move |mut stream, name| {
                let report = report.clone();
                async move {
                    let mut bytes = Vec::new();
                    _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes)).await;
                    _ = report.send(bytes);
                    _ = stream.write_all(name.as_bytes()).await;
                }
            }),
        )
        .await;
        (backend, received)
    }

    /// A backend whose connections open with a PROXY header: each is read
    /// to its end, the header parsed (strictly, `parse_proxy`) and reported
    /// with what followed it; then it writes its name and closes.
    pub async fn proxy_reader(name: &'static str) -> (Self, mpsc::UnboundedReceiver<Received>) {
        let (report, received) = mpsc::unbounded_channel();
        let backend = Self::start(
            name,
            serve(move |mut stream, name| {
                let report = report.clone();
                async move {
                    let mut bytes = Vec::new();
                    _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes)).await;
                    let received = match parse_proxy(&bytes) {
                        Ok((header, rest)) => Received {
                            header: Ok(header),
                            payload: rest.to_vec(),
                        },
                        Err(why) => Received {
                            header: Err(why),
                            payload: bytes,
                        },
                    };
                    _ = report.send(received);
                    _ = stream.write_all(name.as_bytes()).await;
                }
            }),
        )
        .await;
        (backend, received)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

/// A `Serve` from an async closure.
pub fn serve<F, Fut>(f: F) -> Serve
where
    F: Fn(TcpStream, &'static str) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |stream, name| Box::pin(f(stream, name)))
}

/// An address nothing listens on: bound once, then released.
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Connects, and reads until the peer closes: what a client of a backend
/// that answers and closes gets. An error if the connection was reset or
/// the answer took longer than `WAIT`.
pub async fn read_answer(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    read_to_close(&mut stream).await
}

/// Reads until the peer closes, within `WAIT`.
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no close within the limit"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether the peer closes the connection (a FIN or a reset) within `WAIT`,
/// whatever it sent before.
pub async fn closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// Reads one line (through its `\n`, which is dropped), within `WAIT`.
pub async fn read_line<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> io::Result<String> {
    let mut line = Vec::new();
    let read = async {
        loop {
            let byte = stream.read_u8().await?;
            if byte == b'\n' {
                return Ok::<_, io::Error>(());
            }
            line.push(byte);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no line within the limit"))??;
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// A connection to a `greeting` backend through the proxy: connected, its
/// greeting read.
pub struct Greeted {
    pub stream: TcpStream,
    /// The name of the backend that answered.
    pub backend: String,
}

impl Greeted {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let mut stream = TcpStream::connect(addr).await?;
        let backend = read_line(&mut stream).await?;
        Ok(Self { stream, backend })
    }

    /// Sends `text` and reads it back, within `WAIT`.
    pub async fn echo(&mut self, text: &str) -> io::Result<()> {
        self.stream.write_all(text.as_bytes()).await?;
        let mut back = vec![0; text.len()];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut back))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo within the limit"))??;
        if back != text.as_bytes() {
            return Err(io::Error::other(format!(
                "echoed {:?}",
                String::from_utf8_lossy(&back)
            )));
        }
        Ok(())
    }
}

// ---- PROXY protocol, as a backend and a client see it ----

/// A PROXY header as a backend parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: u8,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// What a `proxy_reader` backend received on one connection.
#[derive(Debug)]
pub struct Received {
    /// The header, or why the connection did not open with a valid one.
    pub header: Result<ProxyHeader, String>,
    /// The bytes after the header (all of them when there was none).
    pub payload: Vec<u8>,
}

/// The PROXY v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY v1 header for a TCP connection from `source` to `destination`.
pub fn proxy_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A PROXY v2 header (command PROXY, stream transport) for a connection
/// from `source` to `destination`, both of one address family.
pub fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => panic!("source and destination of different families"),
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

/// Parses the PROXY header `bytes` open with (v1 or v2, TCP over IPv4 or
/// IPv6, as the specification writes them, nothing lenient) and returns it
/// with the bytes after it.
pub fn parse_proxy(bytes: &[u8]) -> Result<(ProxyHeader, &[u8]), String> {
    if bytes.starts_with(b"PROXY ") {
        parse_v1(bytes)
    } else if bytes.starts_with(V2_SIGNATURE) {
        parse_v2(bytes)
    } else {
        Err(format!(
            "no PROXY header: opens with {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
        ))
    }
}

fn parse_v1(bytes: &[u8]) -> Result<(ProxyHeader, &[u8]), String> {
    // At most 107 bytes, CRLF included.
    let end = bytes
        .windows(2)
        .take(106)
        .position(|w| w == b"\r\n")
        .ok_or("v1: no CRLF within 107 bytes")?;
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| "v1: not ASCII")?;
    let fields: Vec<&str> = line.split(' ').collect();
    let [_, family, source, destination, source_port, destination_port] = fields[..] else {
        return Err(format!("v1: {line:?} is not six fields"));
    };
    let ip = |text: &str| -> Result<IpAddr, String> {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| format!("v1: bad address {text:?}"))?;
        match (family, ip) {
            ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
            _ => Err(format!("v1: {text:?} is not a {family} address")),
        }
    };
    let port = |text: &str| -> Result<u16, String> {
        if text.starts_with('0') && text != "0" || text.starts_with('+') {
            return Err(format!("v1: port {text:?} is not canonical"));
        }
        text.parse().map_err(|_| format!("v1: bad port {text:?}"))
    };
    let header = ProxyHeader {
        version: 1,
        source: SocketAddr::new(ip(source)?, port(source_port)?),
        destination: SocketAddr::new(ip(destination)?, port(destination_port)?),
    };
    Ok((header, &bytes[end + 2..]))
}

fn parse_v2(bytes: &[u8]) -> Result<(ProxyHeader, &[u8]), String> {
    if bytes.len() < 16 {
        return Err("v2: shorter than its fixed part".into());
    }
    if bytes[12] != 0x21 {
        return Err(format!(
            "v2: version/command byte {:#04x}, not 0x21 (v2, PROXY)",
            bytes[12]
        ));
    }
    let length = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let block = bytes
        .get(16..16 + length)
        .ok_or("v2: shorter than its length says")?;
    let (source, destination) = match bytes[13] {
        0x11 if length >= 12 => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap());
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x21 if length >= 36 => {
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap());
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        family => {
            return Err(format!(
                "v2: family/transport {family:#04x} with {length} address bytes"
            ))
        }
    };
    let header = ProxyHeader {
        version: 2,
        source,
        destination,
    };
    Ok((header, &bytes[16 + length..]))
}

// ---- TLS ----

/// A certificate authority made for one test, and the client configuration
/// that trusts it alone.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cutover test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Self {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A certificate for `names` (wildcards allowed) and its key.
    pub fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let (cert, key) = self.sign(names);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    fn sign(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert, key)
    }

    /// A certificate for `names` and its key, written as PEM files
    /// `<stem>.crt` and `<stem>.key` in `dir`, as a user would have them.
    pub fn issue_files(
        &self,
        dir: &std::path::Path,
        stem: &str,
        names: &[&str],
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = self.sign(names);
        let (cert_path, key_path) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// This CA's certificate as a PEM file in `dir`.
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A certificate for `names` and its key, PEM-encoded: what a `cert`
    /// and `key` file hold.
    pub fn issue_pem(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate, PEM-encoded: what a `ca_file` holds.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A root store holding this CA only.
    pub fn roots(&self) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        Arc::new(roots)
    }

    /// A client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS backend with a certificate for `names` from `ca`: after the
/// handshake it writes its name and a newline, then echoes until the
/// client closes.
pub async fn tls_backend(name: &'static str, ca: &TestCa, names: &[&str]) -> TcpBackend {
    let (cert, key) = ca.issue(names);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    TcpBackend::start(
        name,
        serve(move |stream, name| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(Ok(tls)) = tokio::time::timeout(WAIT, acceptor.accept(stream)).await else {
                    return;
                };
                let (mut read, mut write) = tokio::io::split(tls);
                if write
                    .write_all(format!("{name}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                _ = write.flush().await;
                _ = tokio::io::copy(&mut read, &mut write).await;
                _ = write.shutdown().await;
            }
        }),
    )
    .await
}

/// A TLS client connection through `addr` for `server_name`, verified
/// against `config`'s roots, with the name of the backend that answered.
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<(tokio_rustls::client::TlsStream<TcpStream>, String)> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = tokio::time::timeout(WAIT, connector.connect(name, stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no handshake within the limit"))??;
    let backend = read_line(&mut tls).await?;
    Ok((tls, backend))
}

/// The name of the backend that answers a TLS client for `server_name`.
pub async fn tls_backend_name(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<String> {
    tls_connect(addr, server_name, config)
        .await
        .map(|(_, name)| name)
}

/// The first flight of a TLS client for `server_name`: its ClientHello,
/// in the records rustls frames it in.
pub fn client_hello(config: Arc<rustls::ClientConfig>, server_name: &str) -> Vec<u8> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

/// The same handshake bytes as `records`, framed again in handshake records:
/// the first with `first` bytes of payload, the others with at most `size`.
pub fn reframe(records: &[u8], first: usize, size: usize) -> Vec<u8> {
    let (payload, version) = handshake_payload(records);
    let mut out = Vec::new();
    let (head, tail) = payload.split_at(first.min(payload.len()));
    for chunk in std::iter::once(head).chain(tail.chunks(size)) {
        out.push(0x16);
        out.extend_from_slice(&version);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The handshake messages carried by `records`, and the records' version.
pub fn handshake_payload(records: &[u8]) -> (Vec<u8>, [u8; 2]) {
    let mut payload = Vec::new();
    let mut version = [0x03, 0x01];
    let mut rest = records;
    while !rest.is_empty() {
        assert!(rest.len() >= 5 && rest[0] == 0x16, "a handshake record");
        version = [rest[1], rest[2]];
        let length = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        payload.extend_from_slice(&rest[5..5 + length]);
        rest = &rest[5 + length..];
    }
    (payload, version)
}
