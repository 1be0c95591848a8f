//! A thin, time-bounded wrapper over alloy's JSON-RPC provider: only the calls Coffer makes.

use std::future::IntoFuture;
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Block, Filter, Log, Transaction, TransactionReceipt};
use alloy::sol;
use alloy::sol_types::SolEvent;

use crate::ChainError;

sol! {
    /// The ERC-20 transfer event.
    event Transfer(address indexed from, address indexed to, uint256 value);
    /// ERC-20 `balanceOf`.
    function balanceOf(address owner) returns (uint256);
}

/// Each call's time limit: a hung node must not hang the listener.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's JSON-RPC client. Its URL usually carries a provider key (in the path, the query or
/// the user info): it is never printed — errors and `Debug` name only `scheme://host:port/…`.
#[derive(Clone)]
pub struct Rpc {
    provider: RootProvider,
    /// The parts of the URL that must not be printed, longest first.
    secret_parts: std::sync::Arc<Vec<String>>,
    redacted: std::sync::Arc<str>,
}

impl std::fmt::Debug for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rpc")
            .field("url", &&*self.redacted)
            .finish_non_exhaustive()
    }
}

/// What of `url` must never be printed (the whole URL, its path and query, its password), and
/// the printable `scheme://host:port/…`.
fn redaction(url: &alloy::transports::http::reqwest::Url) -> (Vec<String>, String) {
    let mut parts = vec![
        url.as_str().to_string(),
        url.as_str().trim_end_matches('/').to_string(),
    ];
    let path_and_query = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    parts.extend(
        [path_and_query, url.path().to_string()]
            .into_iter()
            .filter(|p| p.len() > 1),
    );
    parts.extend(url.query().map(str::to_string));
    parts.extend(url.password().map(str::to_string));
    parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    parts.dedup();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let redacted = format!("{}://{}{port}/…", url.scheme(), url.host_str().unwrap_or("?"));
    (parts, redacted)
}

impl Rpc {
    /// A JSON-RPC client over `http://` or `https://` (verified against `roots`); no request is
    /// sent until the first call.
    pub fn connect(url: &str, roots: &coffer_tls::TlsRoots) -> Result<Self, ChainError> {
        let url: alloy::transports::http::reqwest::Url = url
            .parse()
            .map_err(|_| ChainError::Config("ETH_RPC_URL is not a valid URL".into()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ChainError::Config(format!(
                "ETH_RPC_URL: the scheme {:?} is not supported; use http:// or https://",
                url.scheme()
            )));
        }
        let client = roots
            .http_client(CALL_TIMEOUT)
            .map_err(|e| ChainError::Config(e.to_string()))?;
        let (secret_parts, redacted) = redaction(&url);
        let client = alloy::rpc::client::RpcClient::new_http_with_client(client, url);
        Ok(Rpc {
            provider: RootProvider::new(client),
            secret_parts: std::sync::Arc::new(secret_parts),
            redacted: redacted.into(),
        })
    }

    /// `text` with every secret part of the URL replaced by the printable form.
    pub fn redact(&self, text: &str) -> String {
        self.secret_parts.iter().fold(text.to_string(), |text, part| {
            text.replace(part.as_str(), &self.redacted)
        })
    }

    /// The printable form of the URL (`scheme://host:port/…`).
    pub fn redacted_url(&self) -> &str {
        &self.redacted
    }

    async fn bounded<T, E: std::error::Error + 'static>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, ChainError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(ChainError::Rpc(format!(
                "{what}: {}",
                self.redact(&coffer_tls::error_chain(&e))
            ))),
            Err(_) => Err(ChainError::Rpc(format!("{what}: timed out"))),
        }
    }

    pub fn provider(&self) -> &RootProvider {
        &self.provider
    }

    pub async fn head(&self) -> Result<u64, ChainError> {
        self.bounded("eth_blockNumber", self.provider.get_block_number().into_future())
            .await
    }

    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        self.bounded("eth_chainId", self.provider.get_chain_id().into_future())
            .await
    }

    /// Block `number` with its full transactions, `None` if the node does not have it.
    pub async fn block(&self, number: u64) -> Result<Option<Block>, ChainError> {
        let call = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .full();
        self.bounded("eth_getBlockByNumber", call.into_future()).await
    }

    /// The canonical hash at `number`, lower-case `0x…`.
    pub async fn block_hash(&self, number: u64) -> Result<Option<String>, ChainError> {
        let call = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number));
        let block = self.bounded("eth_getBlockByNumber", call.into_future()).await?;
        Ok(block.map(|b| format!("{:#x}", b.header.hash)))
    }

    /// The timestamp (Unix seconds, set by its producer) of block `number`, `None` if the node
    /// does not have it.
    pub async fn block_timestamp(&self, number: u64) -> Result<Option<u64>, ChainError> {
        let call = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number));
        let block = self.bounded("eth_getBlockByNumber", call.into_future()).await?;
        Ok(block.map(|b| b.header.timestamp))
    }

    /// ERC-20 `Transfer` logs of `contracts` in block `number` (decoded by
    /// [`crate::deposits::token_transfers`]).
    pub async fn transfer_logs(&self, number: u64, contracts: &[Address]) -> Result<Vec<Log>, ChainError> {
        if contracts.is_empty() {
            return Ok(Vec::new());
        }
        let filter = Filter::new()
            .from_block(number)
            .to_block(number)
            .address(contracts.to_vec())
            .event_signature(Transfer::SIGNATURE_HASH);
        self.bounded("eth_getLogs", self.provider.get_logs(&filter)).await
    }

    pub async fn receipt(&self, hash: B256) -> Result<Option<TransactionReceipt>, ChainError> {
        self.bounded(
            "eth_getTransactionReceipt",
            self.provider.get_transaction_receipt(hash).into_future(),
        )
        .await
    }

    pub async fn transaction(&self, hash: B256) -> Result<Option<Transaction>, ChainError> {
        self.bounded(
            "eth_getTransactionByHash",
            self.provider.get_transaction_by_hash(hash).into_future(),
        )
        .await
    }

    pub async fn balance(&self, address: Address) -> Result<U256, ChainError> {
        self.bounded("eth_getBalance", self.provider.get_balance(address).into_future())
            .await
    }

    /// The coin balance of `address` at block `number`.
    pub async fn balance_at(&self, address: Address, number: u64) -> Result<U256, ChainError> {
        let call = self.provider.get_balance(address).number(number);
        self.bounded("eth_getBalance", call.into_future()).await
    }

    /// `holder`'s balance of the ERC-20 `token` at block `number` (`balanceOf`).
    pub async fn token_balance_at(
        &self,
        token: Address,
        holder: Address,
        number: u64,
    ) -> Result<U256, ChainError> {
        use alloy::sol_types::SolCall;
        let input = balanceOfCall { owner: holder }.abi_encode();
        let request = alloy::rpc::types::TransactionRequest::default()
            .to(token)
            .input(input.into());
        let call = self.provider.call(request).block(number.into());
        let answer = self.bounded("eth_call balanceOf", call.into_future()).await?;
        balanceOfCall::abi_decode_returns(&answer)
            .map_err(|e| ChainError::Rpc(format!("balanceOf answered {} bytes: {e}", answer.len())))
    }

    /// The next nonce of `address` counting pending transactions.
    pub async fn pending_nonce(&self, address: Address) -> Result<u64, ChainError> {
        let call = self.provider.get_transaction_count(address).pending();
        self.bounded("eth_getTransactionCount", call.into_future()).await
    }

    /// The number of transactions of `address` mined so far (its next nonce on chain).
    pub async fn latest_nonce(&self, address: Address) -> Result<u64, ChainError> {
        let call = self.provider.get_transaction_count(address).latest();
        self.bounded("eth_getTransactionCount", call.into_future()).await
    }

    /// The number of transactions of `address` mined up to and including block `number`.
    pub async fn nonce_at(&self, address: Address, number: u64) -> Result<u64, ChainError> {
        let call = self.provider.get_transaction_count(address).number(number);
        self.bounded("eth_getTransactionCount", call.into_future()).await
    }

    pub async fn gas_price(&self) -> Result<u128, ChainError> {
        self.bounded("eth_gasPrice", self.provider.get_gas_price().into_future())
            .await
    }

    /// Sends a signed transaction; the node's answer (or its absence) is reported as is.
    pub async fn send_raw(&self, raw: &[u8]) -> Result<B256, ChainError> {
        let pending = self
            .bounded("eth_sendRawTransaction", self.provider.send_raw_transaction(raw))
            .await?;
        Ok(*pending.tx_hash())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_call_and_the_client_never_print_the_url_or_its_key() {
        let roots = coffer_tls::TlsRoots::platform();
        // Port 9 (discard) refuses at once: the transport error is what usually carries the URL.
        let url = "http://user:pw-4f1c9a7e@127.0.0.1:9/v3/key-9b8a7c6d5e4f?apikey=q-1a2b3c4d";
        let rpc = Rpc::connect(url, &roots).unwrap();
        let error = rpc.head().await.unwrap_err().to_string();
        let debug = format!("{rpc:?}");
        for secret in ["key-9b8a7c6d5e4f", "q-1a2b3c4d", "pw-4f1c9a7e"] {
            assert!(!error.contains(secret), "{error}");
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(error.contains("eth_blockNumber"), "{error}");
        assert_eq!(rpc.redacted_url(), "http://127.0.0.1:9/…");
    }
}
