// The README's walk-through ("Walk-through with curl") through the client generated from
// docs/openapi.json: if a path, a parameter or a body changes shape, this stops compiling.
// Run by the API test `openapi_typescript_client_runs_the_readme_walkthrough` against a real server:
//   COFFER_API=http://127.0.0.1:PORT COFFER_PAYMENT_EMAIL=... COFFER_PAYMENT_PASSWORD=... node dist/walkthrough.js
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Problem = components["schemas"]["Problem"];

const base = required("COFFER_API");
const api = createClient<paths>({ baseUrl: base });

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`walk-through: ${what}`);
}

function bearer(token: string) {
  return { Authorization: `Bearer ${token}` };
}

function key(): string {
  return crypto.randomUUID();
}

async function register(email: string): Promise<string> {
  const { data, error, response } = await api.POST("/v1/auth/register", {
    body: { email, password: "correct horse battery staple" },
  });
  check(response.status === 201 && data !== undefined, `register ${email}: ${JSON.stringify(error)}`);
  return data!.access_token;
}

async function openWallet(token: string): Promise<string> {
  const { data, response } = await api.POST("/v1/wallets", {
    params: { header: { "Idempotency-Key": key() } },
    headers: bearer(token),
    body: { asset: "ETH" },
  });
  check(response.status === 201 && data !== undefined, "open a wallet");
  check(response.headers.get("location") === `/v1/wallets/${data!.id}`, "Location names the wallet");
  return data!.id;
}

async function main(): Promise<void> {
  const run = crypto.randomUUID().slice(0, 8);
  const alice = await register(`alice-${run}@example.com`);
  const bob = await register(`bob-${run}@example.com`);

  const login = await api.POST("/v1/auth/login", {
    body: { email: `alice-${run}@example.com`, password: "correct horse battery staple" },
  });
  check(login.response.status === 200 && login.data?.token_type === "Bearer", "log in");

  const a = await openWallet(alice);
  const b = await openWallet(bob);

  const payment = await api.POST("/v1/auth/login", {
    body: { email: required("COFFER_PAYMENT_EMAIL"), password: required("COFFER_PAYMENT_PASSWORD") },
  });
  check(payment.data !== undefined, "the payment rail logs in");
  const deposit = await api.POST("/v1/deposits", {
    params: { header: { "Idempotency-Key": key() } },
    headers: bearer(payment.data!.access_token),
    body: { wallet_id: a, amount: "2.5", external_reference: `bank-${run}` },
  });
  // 201 is a credit; 202 would be a deposit held above the rail's caps for staff (no `state`).
  const credit = deposit.data;
  const credited = credit !== undefined && "state" in credit && credit.state === "confirmed";
  check(deposit.response.status === 201 && credited, "the rail credits 2.5 ETH");

  const transfer = await api.POST("/v1/transfers", {
    params: { header: { "Idempotency-Key": key() } },
    headers: bearer(alice),
    body: { from_wallet_id: a, to_wallet_id: b, amount: "0.75" },
  });
  check(transfer.response.status === 201 && transfer.data?.amount === "0.75", "Alice sends 0.75 ETH to Bob");

  const wallet = await api.GET("/v1/wallets/{id}", { params: { path: { id: a } }, headers: bearer(alice) });
  check(wallet.data?.available === "1.75", `available 1.75, got ${wallet.data?.available}`);

  // The ledger, one entry per page: the query parameters are real query parameters.
  const first = await api.GET("/v1/wallets/{id}/ledger", {
    params: { path: { id: a }, query: { limit: 1 } },
    headers: bearer(alice),
  });
  check(first.data?.items.length === 1 && first.data.items[0]?.amount === "-0.75", "newest first: -0.75");
  const cursor = first.data!.next_cursor ?? undefined;
  check(cursor !== undefined, "a next page");
  const second = await api.GET("/v1/wallets/{id}/ledger", {
    params: { path: { id: a }, query: { limit: 1, cursor } },
    headers: bearer(alice),
  });
  check(second.data?.items[0]?.amount === "2.5", "then the 2.5 deposit");

  // Errors are typed problem documents.
  const refused = await api.GET("/v1/transactions", { params: { query: { limit: 1000 } }, headers: bearer(alice) });
  const problem: Problem | undefined = refused.error;
  check(refused.response.status === 400 && problem?.code === "invalid_query", "limit 1000 is invalid_query");
  check(refused.response.headers.get("content-type") === "application/problem+json", "problem+json");

  console.log("walk-through passed");
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
