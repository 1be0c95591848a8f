//! The support console (O7) in a real headless Chromium (Debian's, over WebDriver), and its
//! session, CSRF and header rules over plain HTTP.
//!
//! `COFFER_CONSOLE_SCREENSHOTS=docs/console` makes the phone-width test save PNGs of the main
//! pages there (docs/console.md shows them).

use std::time::Duration;

use coffer_domain::TxState;
use coffer_store::mongodb::bson::doc;
use coffer_store::Role;
use coffer_test_support::browser::Browser;
use coffer_test_support::{Options, StaffAccount, TestApp, TestUser};
use reqwest::header;
use reqwest::StatusCode;
use serde_json::json;

use crate::admin::withdrawal_in_review;

/// The longest a page may take to follow a click.
const WAIT: Duration = Duration::from_secs(20);

/// Signs `account` in through the console's form.
async fn sign_in(browser: &Browser, app: &TestApp, account: &StaffAccount) {
    browser.goto(&app.url("/console/sign-in")).await;
    browser.type_into("#email", &account.email).await;
    browser.type_into("#password", &account.password).await;
    browser.type_into("#totp_code", &account.code()).await;
    browser.click("#sign-in").await;
    // Signed in, the browser lands on the home page.
    browser.wait_for_url(|url| url.ends_with("/console"), WAIT).await;
}

/// A user with an ETH wallet holding `amount`.
async fn funded_user(app: &TestApp, amount: &str) -> (TestUser, String) {
    let payment = app.staff(Role::Payment).await;
    let user = app.register().await;
    let wallet = app.create_wallet(&user, "ETH").await;
    app.deposit(&payment, &wallet, amount).await;
    (user, wallet)
}

/// The console over plain HTTP (no redirects followed), signed in as one staff member.
struct Http {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of the hidden CSRF field in a page.
fn csrf_in(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    page[start..].split('"').next().unwrap().to_string()
}

async fn http_sign_in(
    app: &TestApp,
    account: &StaffAccount,
    code: &str,
) -> (reqwest::Response, Option<Http>) {
    let client = no_redirects();
    let form = [
        ("email", account.email.as_str()),
        ("password", account.password.as_str()),
        ("totp_code", code),
    ];
    let reply = client
        .post(app.url("/console/sign-in"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let Some(set_cookie) = reply.headers().get(header::SET_COOKIE).cloned() else {
        return (reply, None);
    };
    let cookie = set_cookie
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let home = client
        .get(app.url("/console"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), StatusCode::OK);
    let csrf = csrf_in(&home.text().await.unwrap());
    let http = Http {
        client,
        base: app.url(""),
        cookie,
        csrf,
    };
    (reply, Some(http))
}

impl Http {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `form`, with this session's CSRF token when `csrf` is set, and extra `headers`.
    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        csrf: Option<&str>,
        headers: &[(&str, &str)],
    ) -> StatusCode {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        if let Some(token) = csrf {
            fields.push(("csrf", token));
        }
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, &self.cookie)
            .form(&fields);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap().status()
    }
}

async fn state_of(app: &TestApp, id: &str) -> TxState {
    app.store.transaction_by_id(id).await.unwrap().unwrap().state
}

async fn audited(app: &TestApp, action: &str, subject: &str) -> u64 {
    app.count_where("audit_records", doc! { "action": action, "subject": subject })
        .await
}

#[tokio::test]
async fn a_support_user_finds_a_stuck_withdrawal_and_sees_its_timeline() {
    let app = TestApp::spawn().await;
    let (alice, wallet) = funded_user(&app, "5").await;
    let destination = format!("0x{}", "cd".repeat(20));
    let body = json!({ "wallet_id": wallet, "amount": "1.5", "destination_address": destination });
    let reply = app.withdraw(&alice, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    // No broadcaster runs: the withdrawal stays waiting for broadcast, as a stuck one does.
    let withdrawal = reply.body["id"].as_str().unwrap().to_string();
    let support = app.staff_account(Role::Support).await;
    let browser = Browser::start(1200, 900).await;
    sign_in(&browser, &app, &support).await;

    browser.type_into("#q", &alice.email).await;
    browser.click("#find").await;
    let user_page = format!("/console/users/{}", alice.id);
    browser.wait_for_url(|url| url.ends_with(&user_page), WAIT).await;
    let row = browser.text_of(&format!("#wallet-{wallet}")).await;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..4],
        ["ETH", "3.5", "0", "1.5"],
        "available, pending, held: {row}"
    );

    browser
        .click(&format!("a[href='/console/transactions/{withdrawal}']"))
        .await;
    let transaction_page = format!("/console/transactions/{withdrawal}");
    browser
        .wait_for_url(|url| url.ends_with(&transaction_page), WAIT)
        .await;
    // Oldest first: created, then created → pending broadcast.
    assert_eq!(browser.count("ol.timeline li").await, 2);
    let first = browser.text_of("ol.timeline li:first-child").await;
    let last = browser.text_of("ol.timeline li:last-child").await;
    assert!(
        first.starts_with("created\n") && first.contains("requested"),
        "{first}"
    );
    assert!(last.starts_with("created → pending broadcast"), "{last}");
    assert!(last.contains("funds held"), "the cause: {last}");
    let summary = browser.text().await;
    assert!(summary.contains("pending broadcast since"), "{summary}");
    let ledger = browser.text_of("#ledger").await;
    assert!(
        ledger.contains("available") && ledger.contains("-1.5"),
        "{ledger}"
    );
    assert!(ledger.contains("held") && ledger.contains("1.5"), "{ledger}");

    // The transaction id and the deposit-free wallet id find the same things.
    browser
        .goto(&app.url(&format!("/console/find?q={withdrawal}")))
        .await;
    assert!(browser
        .url()
        .await
        .ends_with(&format!("/console/transactions/{withdrawal}")));
    browser.goto(&app.url(&format!("/console/find?q={wallet}"))).await;
    assert!(browser
        .url()
        .await
        .ends_with(&format!("/console/users/{}", alice.id)));
    browser
        .goto(&app.url("/console/find?q=nobody%40example.com"))
        .await;
    assert!(browser.text().await.contains("Nothing matches"));

    // Read like the API's twin: each view is audited.
    assert_eq!(audited(&app, "admin.transaction_viewed", &withdrawal).await, 2);
    assert_eq!(audited(&app, "admin.user_wallets_viewed", &alice.id).await, 2);
    browser.close().await;
}

#[tokio::test]
async fn a_finance_user_proposes_an_adjustment_that_an_admin_approves_and_the_balance_changes() {
    let app = TestApp::spawn().await;
    let (alice, wallet) = funded_user(&app, "5").await;
    let finance = app.staff_account(Role::Finance).await;
    let admin = app.staff_account(Role::Admin).await;
    let browser = Browser::start(1200, 900).await;
    sign_in(&browser, &app, &finance).await;

    browser.goto(&app.url("/console/adjustments")).await;
    browser.type_into("#wallet_id", &wallet).await;
    browser.type_into("#amount", "2.5").await;
    browser.type_into("#reason", "goodwill credit, ticket 4711").await;
    browser.click("#propose-submit").await;
    browser.wait_for_text("Adjustment proposed", WAIT).await;
    assert_eq!(
        browser.count("button.approve").await,
        0,
        "finance does not approve"
    );
    let proposed = app
        .store
        .adjustments(Some(coffer_store::adjustments::AdjustmentStatus::Proposed), 10)
        .await
        .unwrap();
    assert_eq!(proposed.len(), 1);
    let id = proposed[0].id.clone();
    assert_eq!(proposed[0].proposed_by, finance.id);
    assert_eq!(
        app.wallet(&alice, &wallet).await["available"],
        "5",
        "nothing moved yet"
    );

    browser.click("form.signout button").await;
    browser
        .wait_for_url(|url| url.contains("/console/sign-in"), WAIT)
        .await;
    sign_in(&browser, &app, &admin).await;
    browser.goto(&app.url("/console/adjustments")).await;
    browser
        .type_into(&format!("#reason-{id}"), "checked the ticket")
        .await;
    browser.click(&format!("#adjustment-{id} button.approve")).await;
    browser.wait_for_text("Approved.", WAIT).await;

    assert_eq!(app.wallet(&alice, &wallet).await["available"], "7.5");
    let decided = app.store.adjustment(&id).await.unwrap().unwrap();
    assert_eq!(decided.decided_by.as_deref(), Some(admin.id.as_str()));
    app.assert_books_balance().await;
    let trail = crate::admin::actions(&app).await;
    assert_eq!(trail.iter().filter(|a| *a == "adjustment.proposed").count(), 1);
    assert_eq!(trail.iter().filter(|a| *a == "adjustment.approved").count(), 1);
    browser.close().await;
}

#[tokio::test]
async fn a_support_user_cannot_see_the_approve_button_and_a_forged_post_is_refused() {
    let app = TestApp::spawn().await;
    let (alice, wallet) = funded_user(&app, "5").await;
    let review = withdrawal_in_review(&app, &alice, &wallet, "2").await;
    let support = app.staff_account(Role::Support).await;
    let browser = Browser::start(1200, 900).await;
    sign_in(&browser, &app, &support).await;
    browser.goto(&app.url("/console/reviews")).await;
    browser.find(&format!("#review-{review}")).await;
    assert_eq!(browser.count("button.approve").await, 0);
    assert_eq!(browser.count("button.reject").await, 0);
    assert_eq!(browser.count("a[href='/console/adjustments']").await, 0);

    // The session cookie: HttpOnly (script cannot read it), SameSite=Strict, only under /console.
    let cookie = browser
        .cookie("coffer_console")
        .await
        .expect("the session cookie");
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    assert_eq!(cookie["path"], "/console");
    assert_eq!(browser.execute("return document.cookie;").await, "");
    let token = browser.attribute("input[name=csrf]", "value").await.unwrap();

    // A forged approval from this very session (its cookie and its CSRF token) is refused.
    let forged = Http {
        client: no_redirects(),
        base: app.url(""),
        cookie: format!("coffer_console={}", cookie["value"].as_str().unwrap()),
        csrf: token.clone(),
    };
    let path = format!("/console/reviews/{review}/approve");
    let reason = [("reason", "looks fine")];
    let status = forged.post(&path, &reason, Some(&token), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let propose = [("wallet_id", wallet.as_str()), ("amount", "100"), ("reason", "x")];
    let status = forged
        .post("/console/adjustments", &propose, Some(&token), &[])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(state_of(&app, &review).await, TxState::ManualReview);

    // An admin's POST needs the token too, and must come from the console's own origin.
    let admin = app.staff_account(Role::Admin).await;
    let (_, admin_http) = http_sign_in(&app, &admin, &admin.code()).await;
    let admin_http = admin_http.expect("the admin signs in");
    assert_eq!(
        admin_http.post(&path, &reason, None, &[]).await,
        StatusCode::FORBIDDEN
    );
    let support_token = Some(token.as_str());
    assert_eq!(
        admin_http.post(&path, &reason, support_token, &[]).await,
        StatusCode::FORBIDDEN
    );
    let own = Some(admin_http.csrf.as_str());
    let other_site = [("origin", "https://evil.example")];
    assert_eq!(
        admin_http.post(&path, &reason, own, &other_site).await,
        StatusCode::FORBIDDEN
    );
    let cross_site = [("sec-fetch-site", "cross-site")];
    assert_eq!(
        admin_http.post(&path, &reason, own, &cross_site).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(state_of(&app, &review).await, TxState::ManualReview);
    let same_site = [
        ("origin", admin_http.base.trim_end_matches('/')),
        ("sec-fetch-site", "same-origin"),
    ];
    assert_eq!(
        admin_http.post(&path, &reason, own, &same_site).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(state_of(&app, &review).await, TxState::PendingBroadcast);
    assert_eq!(audited(&app, "review.approved", &review).await, 1);
    browser.close().await;
}

/// Fails unless the page is no wider than the viewport (nothing to scroll sideways).
async fn assert_fits(browser: &Browser, page: &str) {
    let widths = browser
        .execute("return [document.documentElement.scrollWidth, window.innerWidth];")
        .await;
    let (scroll, inner) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
    assert!(inner <= 400, "a phone's width, not {inner}");
    assert!(
        scroll <= inner,
        "{page} is {scroll} px wide in a {inner} px window"
    );
}

#[tokio::test]
async fn console_pages_stay_usable_at_a_phone_width() {
    let app = TestApp::spawn().await;
    let (alice, wallet) = funded_user(&app, "5").await;
    let review = withdrawal_in_review(&app, &alice, &wallet, "2").await;
    let finance = app.staff(Role::Finance).await;
    let proposal =
        json!({ "wallet_id": wallet, "amount": "-0.25", "reason": "fee refund reversed, ticket 812" });
    let key = uuid::Uuid::new_v4().to_string();
    let proposed = app
        .send(
            "POST",
            "/v1/admin/adjustments",
            Some(&finance.access_token),
            Some(&key),
            Some(&proposal),
        )
        .await;
    assert_eq!(proposed.status, StatusCode::CREATED, "{:?}", proposed.body);
    let admin = app.staff_account(Role::Admin).await;
    let mut browser = Browser::start(390, 844).await;
    sign_in(&browser, &app, &admin).await;

    // Run a reconciliation and verify the audit trail the way staff do: both show they run.
    browser.goto(&app.url("/console/reconciliations")).await;
    browser.click("#run-now").await;
    let started = std::time::Instant::now();
    while !browser.text().await.contains("Your reconciliation finished") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{}",
            browser.text().await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    browser.find("#runs").await;
    browser.goto(&app.url("/console/audit")).await;
    browser.click("#verify").await;
    browser.wait_for("#shards", Duration::from_secs(60)).await;
    assert!(browser.text().await.contains("The audit trail is intact"));

    let run = app.store.reconciliation_runs(None, 1).await.unwrap().items[0]
        .id
        .clone();
    let pages = [
        ("home", "/console".to_string()),
        ("user", format!("/console/users/{}", alice.id)),
        ("transaction", format!("/console/transactions/{review}")),
        ("reviews", "/console/reviews".to_string()),
        ("adjustments", "/console/adjustments".to_string()),
        ("reconciliations", "/console/reconciliations".to_string()),
        ("reconciliation-run", format!("/console/reconciliations/{run}")),
        ("audit", "/console/audit/result".to_string()),
    ];
    for (_, path) in &pages {
        browser.goto(&app.url(path)).await;
        assert_fits(&browser, path).await;
    }
    browser.goto(&app.url("/console/sign-in")).await;
    if let Ok(dir) = std::env::var("COFFER_CONSOLE_SCREENSHOTS") {
        screenshots(&mut browser, &app, std::path::Path::new(&dir), &pages).await;
    }
    browser.close().await;
}

/// PNGs of the main pages, at a phone's width and at a desktop's.
async fn screenshots(browser: &mut Browser, app: &TestApp, dir: &std::path::Path, pages: &[(&str, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, path) in pages {
        browser.goto(&app.url(path)).await;
        browser.screenshot(&dir.join(format!("{name}-phone.png"))).await;
    }
    browser.resize(1200, 900).await;
    for (name, path) in pages {
        browser.goto(&app.url(path)).await;
        browser.screenshot(&dir.join(format!("{name}.png"))).await;
    }
    let signed_out = Browser::start(1200, 900).await;
    signed_out.goto(&app.url("/console/sign-in")).await;
    let mut signed_out = signed_out;
    signed_out.screenshot(&dir.join("sign-in.png")).await;
    signed_out.close().await;
}

#[tokio::test]
async fn console_sessions_live_in_the_database_and_every_page_has_strict_headers() {
    let app = TestApp::spawn().await;
    let options = Options {
        database: Some(app.store.database().name().to_string()),
        ..Options::default()
    };
    let replica = TestApp::spawn_with(options).await;
    let support = app.staff_account(Role::Support).await;

    let (wrong, none) = http_sign_in(&app, &support, "000000").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(none.is_none());
    let (reply, http) = http_sign_in(&app, &support, &support.next_code()).await;
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    let set_cookie = reply.headers()[header::SET_COOKIE].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age=28800"] {
        assert!(set_cookie.contains(attribute), "{attribute} in {set_cookie}");
    }
    let http = http.unwrap();
    let home = http.get("/console").await;
    let headers = home.headers();
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let page = home.text().await.unwrap();
    assert!(
        !page.contains("<script") && !page.contains("style="),
        "no inline script or style"
    );

    // Another replica serves the same session; signing out there ends it here too.
    let on_replica = Http {
        client: no_redirects(),
        base: replica.url(""),
        cookie: http.cookie.clone(),
        csrf: http.csrf.clone(),
    };
    assert_eq!(on_replica.get("/console/reviews").await.status(), StatusCode::OK);
    let csrf = Some(http.csrf.as_str());
    assert_eq!(
        on_replica.post("/console/sign-out", &[], csrf, &[]).await,
        StatusCode::SEE_OTHER
    );
    let after = http.get("/console/reviews").await;
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert!(after.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .starts_with("/console/sign-in"));

    // A forged cookie (another session id under the same MAC) is no session.
    let (id, mac) = http.cookie.split_once('.').unwrap();
    let forged = Http {
        cookie: format!("{}x.{mac}", id),
        client: no_redirects(),
        base: app.url(""),
        csrf: String::new(),
    };
    assert_eq!(forged.get("/console").await.status(), StatusCode::SEE_OTHER);

    // Customers cannot sign in to the console.
    let customer = app.register().await;
    let form = [
        ("email", customer.email.as_str()),
        ("password", customer.password.as_str()),
        ("totp_code", "123456"),
    ];
    let refused = no_redirects()
        .post(app.url("/console/sign-in"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.headers().get(header::SET_COOKIE).is_none());
    assert!(refused.text().await.unwrap().contains("staff accounts only"));
}

#[tokio::test]
async fn a_chain_deposit_is_found_by_its_hash_and_address_with_confirmations_and_an_explorer_link() {
    let mut file: coffer_domain::asset::AssetsFile =
        serde_json::from_str(coffer_test_support::DEV_ASSETS).unwrap();
    let eth = file.assets.iter_mut().find(|a| a.symbol == "ETH").unwrap();
    eth.explorer_tx_url = Some("https://explorer.example/tx/{tx_hash}".into());
    let catalog = coffer_domain::AssetCatalog::from_specs(&file.assets).unwrap();
    let asset = catalog.get("ETH").unwrap().clone();
    let options = Options {
        assets: Some(catalog),
        ..Options::default()
    };
    let app = TestApp::spawn_with(options).await;
    let alice = app.register().await;
    let wallet_id = app.create_wallet(&alice, "ETH").await;
    let wallet = app.store.wallet_by_id(&wallet_id).await.unwrap().unwrap();
    let address = format!("0x{}", "ab".repeat(20));
    let derived = address.clone();
    app.store
        .deposit_address(&wallet, &asset.chain, move |_| Ok(derived.clone()))
        .await
        .unwrap();
    let hash = format!("0x{}", "c4".repeat(32));
    let deposit = coffer_domain::ChainDeposit {
        chain: asset.chain.clone(),
        tx_hash: hash.clone(),
        log_index: None,
        address: address.clone(),
        asset: "ETH".into(),
        amount: coffer_domain::Amount::parse_decimal("0.5", 18).unwrap(),
        block_number: 12,
        block_hash: format!("0x{}", "0d".repeat(32)),
        source: "listener".into(),
    };
    app.store.observe_deposit(&deposit, Some(&asset)).await.unwrap();
    let support = app.staff_account(Role::Support).await;
    let (_, http) = http_sign_in(&app, &support, &support.code()).await;
    let http = http.unwrap();

    let found = http.get(&format!("/console/find?q={hash}")).await;
    assert_eq!(found.status(), StatusCode::SEE_OTHER);
    let page_path = found.headers()[header::LOCATION].to_str().unwrap().to_string();
    assert!(page_path.starts_with("/console/transactions/"), "{page_path}");
    let page = http.get(&page_path).await.text().await.unwrap();
    let link = format!("href=\"https://explorer.example/tx/{hash}\"");
    assert!(page.contains(&link), "the explorer link: {page}");
    assert!(
        page.contains("0 of 3 required"),
        "confirmations against the threshold: {page}"
    );
    assert!(page.contains(">12<"), "the block: {page}");

    let by_address = http
        .get(&format!(
            "/console/find?q={}",
            address.to_uppercase().replace("0X", "0x")
        ))
        .await;
    assert_eq!(
        by_address.headers()[header::LOCATION],
        format!("/console/users/{}", alice.id).as_str()
    );
}
