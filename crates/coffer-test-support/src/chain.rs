//! A private anvil per test (re-orgs are global to a node, so tests never share one), plus the
//! few JSON-RPC calls chain tests make: send coin and tokens from anvil's unlocked accounts,
//! deploy the ERC-20 fixture, mine, re-org.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use coffer_chain::rpc::Rpc;
use serde_json::{json, Value};

/// anvil's first funded account (unlocked on a dev node).
pub const FUNDER: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
/// The test mnemonic of deposit addresses (BIP39 test vector; never holds real funds).
pub const DEPOSIT_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
/// The creation bytecode of tests/fixtures/erc20/TestToken.sol.
pub const TOKEN_BYTECODE: &str = include_str!("../../../tests/fixtures/erc20/TestToken.bin");

/// A running anvil, killed when dropped.
pub struct Anvil {
    child: Child,
    pub url: String,
    pub rpc: Rpc,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn anvil_binary() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join(".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
}

/// A free port of `ports` (8700..8800: the range this project's chain tests use), starting at
/// one picked by the process id so that parallel test processes rarely race for one.
fn free_port(ports: std::ops::Range<u16>) -> u16 {
    let width = ports.end - ports.start;
    let first = (std::process::id() % u32::from(width)) as u16;
    (0..width)
        .map(|i| ports.start + (first + i) % width)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .unwrap_or_else(|| panic!("a free port in {ports:?}"))
}

impl Anvil {
    /// Starts anvil on a free port and waits until it answers (bounded: 10 s).
    pub async fn start() -> Anvil {
        Self::start_in(8700..8800).await
    }

    /// [`Anvil::start`] on a free port of `ports` (the fault harness has its own range).
    pub async fn start_in(ports: std::ops::Range<u16>) -> Anvil {
        for _ in 0..5 {
            let port = free_port(ports.clone());
            let child = Command::new(anvil_binary())
                .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start anvil (scripts/test installs it under .tools)");
            let url = format!("http://127.0.0.1:{port}");
            let anvil = Anvil {
                child,
                rpc: Rpc::connect(&url, &coffer_tls::TlsRoots::platform()).expect("url"),
                url,
            };
            for _ in 0..100 {
                if anvil.rpc.head().await.is_ok() {
                    return anvil;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("anvil did not start");
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn call(&self, method: &'static str, params: Value) -> Value {
        self.rpc
            .provider()
            .raw_request::<_, Value>(method.into(), params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn head(&self) -> u64 {
        self.rpc.head().await.expect("head")
    }

    pub async fn mine(&self, blocks: u64) {
        self.call("anvil_mine", json!([format!("{blocks:#x}")])).await;
    }

    /// Replaces the last `depth` blocks with empty ones.
    pub async fn reorg(&self, depth: u64) {
        self.call("anvil_reorg", json!([depth, []])).await;
    }

    /// Sends `tx` from an unlocked account and waits until it is mined (anvil mines each
    /// transaction in its own block, but answers `eth_sendTransaction` before that block exists:
    /// a test that polled at once would race the node). Returns the receipt.
    pub async fn send_and_mine(&self, tx: Value) -> Value {
        let hash = self.call("eth_sendTransaction", json!([tx])).await;
        self.receipt_of(hash.as_str().expect("hash")).await
    }

    /// Waits (bounded: 10 s) for the receipt of `hash`.
    pub async fn receipt_of(&self, hash: &str) -> Value {
        for _ in 0..200 {
            let receipt = self.call("eth_getTransactionReceipt", json!([hash])).await;
            if !receipt.is_null() {
                return receipt;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("transaction {hash} was not mined within 10 s");
    }

    /// Sends `wei` from the funded account to `to` and waits until it is mined; returns the tx hash.
    pub async fn send_eth(&self, to: &str, wei: U256) -> String {
        let tx = json!({ "from": FUNDER, "to": to, "value": format!("{wei:#x}") });
        let receipt = self.send_and_mine(tx).await;
        receipt["transactionHash"].as_str().expect("hash").to_string()
    }

    /// Deploys the ERC-20 fixture with `supply` to the funded account; returns its address.
    pub async fn deploy_token(&self, supply: U256) -> String {
        let data = format!("0x{}{:064x}", TOKEN_BYTECODE.trim(), supply);
        let tx = json!({ "from": FUNDER, "data": data, "gas": "0x200000" });
        let receipt = self.send_and_mine(tx).await;
        receipt["contractAddress"]
            .as_str()
            .expect("deployed")
            .to_lowercase()
    }

    /// `transfer(to, amount)` on `token` from the funded account, mined; returns the tx hash.
    pub async fn send_token(&self, token: &str, to: &str, amount: U256) -> String {
        let to: Address = to.parse().expect("address");
        let data = format!("0xa9059cbb{:0>64}{:064x}", hex::encode(to.as_slice()), amount);
        let tx = json!({ "from": FUNDER, "to": token, "data": data, "gas": "0x100000" });
        let receipt = self.send_and_mine(tx).await;
        receipt["transactionHash"].as_str().expect("hash").to_string()
    }

    /// `balanceOf(holder)` of the ERC-20 at `token`.
    pub async fn token_balance(&self, token: &str, holder: &str) -> U256 {
        let holder: Address = holder.parse().expect("address");
        let data = format!("0x70a08231{:0>64}", hex::encode(holder.as_slice()));
        let answer = self
            .call("eth_call", json!([{ "to": token, "data": data }, "latest"]))
            .await;
        U256::from_str_radix(answer.as_str().expect("hex").trim_start_matches("0x"), 16).expect("uint256")
    }

    pub async fn balance(&self, address: &str) -> U256 {
        self.rpc
            .balance(address.parse().expect("address"))
            .await
            .expect("balance")
    }
}

/// A JSON-RPC endpoint at `/v3/<key>` in front of a node served at `/`, as hosted providers put
/// their API key in the URL's path: tests give roles a node URL that carries a secret. It serves
/// until the test's runtime ends.
pub struct KeyedRpc {
    /// `http://127.0.0.1:<port>/v3/<key>`.
    pub url: String,
}

impl KeyedRpc {
    pub async fn start(upstream: &str, key: &str) -> KeyedRpc {
        use axum::response::IntoResponse;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let path = format!("/v3/{key}");
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        let upstream = upstream.to_string();
        let forward = move |body: axum::body::Bytes| {
            let (client, upstream) = (client.clone(), upstream.clone());
            async move {
                let sent = client
                    .post(&upstream)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let Ok(reply) = sent else {
                    return axum::http::StatusCode::BAD_GATEWAY.into_response();
                };
                let status = reply.status();
                let bytes = reply.bytes().await.unwrap_or_default();
                (status, [("content-type", "application/json")], bytes).into_response()
            }
        };
        let app = axum::Router::new().route(&path, axum::routing::post(forward));
        tokio::spawn(async move { axum::serve(listener, app).await });
        KeyedRpc {
            url: format!("http://127.0.0.1:{port}{path}"),
        }
    }
}
