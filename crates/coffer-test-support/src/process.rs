//! Coffer roles as real processes of the `coffer` binary, for tests that need more than one
//! process (two API replicas on one database, a process killed mid-write). Each process logs to
//! its own file in the test's directory; dropping a [`Process`] kills it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running role; killed (SIGKILL) when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What an `api` process needs against the test servers: `MONGODB_URI` (from scripts/test), a
/// fresh database named `<prefix>_<uuid>`, the dev asset catalog and a JWT secret.
pub fn api_env(database_prefix: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    vec![
        (
            "MONGODB_URI".to_string(),
            std::env::var("MONGODB_URI").expect("MONGODB_URI: run through scripts/test"),
        ),
        (
            "COFFER_DATABASE".into(),
            format!("{database_prefix}_{}", uuid::Uuid::new_v4().simple()),
        ),
        (
            "COFFER_ASSETS_FILE".into(),
            root.join("config/assets.dev.json").display().to_string(),
        ),
        (
            "COFFER_JWT_SECRET".into(),
            "processes-test-secret-0123456789abcdef".into(),
        ),
        ("COFFER_AUDIT_KEY".into(), crate::TEST_AUDIT_KEY.into()),
        ("COFFER_PII_KEY".into(), crate::TEST_PII_KEY.into()),
        ("COFFER_PII_INDEX_KEY".into(), crate::TEST_PII_INDEX_KEY.into()),
        // Test users count as verified, as in TestApp (the product's default is unverified).
        ("COFFER_KYC_DEFAULT_TIER".into(), "full".into()),
    ]
}

/// How to start roles: the binary, a directory for their logs, and the environment they share.
pub struct Roles {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Roles {
    /// Roles of `binary` sharing `env`, logging into a fresh directory named after `label`.
    pub fn new(binary: &Path, label: &str, env: Vec<(String, String)>) -> Roles {
        let dir = std::env::temp_dir().join(format!("coffer-{label}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("test directory");
        Roles {
            binary: binary.to_path_buf(),
            dir,
            env,
        }
    }

    /// The command of role `name` with `args`, its stderr going to `<dir>/<name>.log`.
    pub fn command(&self, name: &str, args: &[&str], extra: &[(&str, String)]) -> (Command, PathBuf) {
        let log = self.dir.join(format!("{name}.log"));
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("COFFER_LOG_FORMAT", "json")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"));
        (command, log)
    }

    pub fn spawn(&self, name: &str, args: &[&str], extra: &[(&str, String)]) -> Process {
        let (mut command, log) = self.command(name, args, extra);
        Process {
            name: name.to_string(),
            child: command.spawn().expect("start coffer"),
            log,
        }
    }

    /// Runs `args` to completion with `input` on stdin; whether it succeeded.
    pub fn run_with_stdin(&self, name: &str, args: &[&str], input: &str) -> bool {
        use std::io::Write;
        let (mut command, _) = self.command(name, args, &[]);
        let mut child = command.stdin(Stdio::piped()).spawn().expect("start coffer");
        writeln!(child.stdin.take().expect("stdin"), "{input}").expect("write stdin");
        child.wait().is_ok_and(|s| s.success())
    }
}

/// `coffer user create` of the payment service account `email` (the role payment rails use);
/// whether it succeeded.
pub fn create_payment_account(roles: &Roles, email: &str, password: &str) -> bool {
    let args = [
        "user",
        "create",
        "--email",
        email,
        "--role",
        "payment",
        "--password-stdin",
    ];
    roles.run_with_stdin("payment-account", &args, password)
}

/// Waits until `url` answers 200 (bounded: 30 s).
pub async fn wait_ready(client: &reqwest::Client, url: &str) {
    for _ in 0..300 {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not answer 200 within 30 s");
}
