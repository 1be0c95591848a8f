//! TLS endpoints for tests: a CA and a server certificate made by the `openssl` command, and a
//! TLS-terminating proxy in front of a plain local server (anvil, RabbitMQ, the OTLP receiver).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A throw-away CA with one server certificate for `localhost` and `127.0.0.1`.
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA certificate (PEM): what a client must trust.
    pub ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (it is on every machine: docs/ENVIRONMENT)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestCa {
    /// Makes the CA and the server certificate in a fresh directory.
    pub fn new() -> TestCa {
        let dir = std::env::temp_dir().join(format!("coffer-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Coffer test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        TestCa {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            dir,
        }
    }

    /// The CA certificate as PEM text.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca_file).unwrap()
    }

    /// The server certificate and key files (PEM), e.g. for RabbitMQ's TLS listener.
    pub fn server_files(&self) -> (&Path, &Path) {
        (&self.cert_file, &self.key_file)
    }

    fn server_config(&self) -> rustls::ServerConfig {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert_file)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.key_file).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS listener on 127.0.0.1 that forwards each connection's plain bytes to `upstream`. It
/// serves until the test's runtime ends.
pub struct TlsProxy {
    pub port: u16,
}

impl TlsProxy {
    /// Terminates TLS with `ca`'s server certificate and forwards to `upstream` (`host:port`).
    pub async fn start(ca: &TestCa, upstream: &str) -> TlsProxy {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A client that refuses our certificate ends its handshake: nothing to forward.
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsProxy { port }
    }
}

/// A plain TCP proxy on 127.0.0.1 that holds every chunk it forwards for `delay`, in both
/// directions: a slow network or a busy server in front of a real one. [`SlowProxy::stop`]
/// refuses new connections and cuts the open ones (a dead server).
pub struct SlowProxy {
    pub port: u16,
    stop: tokio::sync::watch::Sender<bool>,
}

impl SlowProxy {
    pub async fn start(upstream: &str, delay: std::time::Duration) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            let mut stopping = stopped.clone();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopping.changed() => return,
                };
                let Ok((client, _)) = accepted else { return };
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (from, to) in [
                    (
                        Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                        Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    ),
                    (Box::new(server_read), Box::new(client_write)),
                ] {
                    let mut stopped = stopped.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = slow_copy(from, to, delay) => {}
                            _ = stopped.changed() => {}
                        }
                    });
                }
            }
        });
        SlowProxy { port, stop }
    }

    /// Stops accepting and cuts every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

async fn slow_copy(
    mut from: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    mut to: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    delay: std::time::Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        tokio::time::sleep(delay).await;
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
