//! Routes and handlers. `routes()` is the single list the router is built from; the
//! OpenAPI document is generated from the handlers' annotations, and a test checks that
//! both name the same (method, path) pairs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put, MethodRouter};
use chrono::Utc;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::problem::{Problem, ProblemBody};
use super::Shared;
use crate::decision::{Authorization, DecisionSummary, KycStatus};
use crate::issuing::{CardAction, CardKind, Cardholder, Program, SpendingControls};
use crate::ledger::TransferKind;
use crate::money::{parse_decimal, Currency};
use crate::service::responses::{
    AuthorizationResponse, Balance, CardResponse, HoldResponse, ReversalResponse, TransferResponse,
};

type ApiResult = Result<Response, Problem>;

// ---- request bodies ---------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProgram {
    pub id: String,
    /// Name of a loaded policy.
    pub policy: String,
    #[schema(value_type = String, example = "NGN")]
    pub currency: Currency,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    pub program: String,
    /// Shown once; only its SHA-256 is stored.
    pub api_key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deposit {
    #[schema(example = "1000000.00")]
    pub amount: String,
    #[schema(value_type = String, example = "NGN")]
    pub currency: Currency,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCardholder {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub kyc: Option<KycStatus>,
    #[serde(default)]
    pub blocked: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCardholder {
    pub kyc: Option<KycStatus>,
    pub blocked: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCard {
    pub cardholder_id: String,
    pub kind: CardKind,
    /// Defaults to the program's currency.
    #[schema(value_type = Option<String>)]
    pub currency: Option<Currency>,
    pub controls: Option<SpendingControls>,
    /// Issue active (default) or inactive.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountBody {
    /// In the card currency, a decimal string.
    #[schema(example = "5000.00")]
    pub amount: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    /// In the authorization's currency.
    pub amount: String,
    /// A final capture releases whatever the hold still reserves (default true).
    #[serde(default = "yes", rename = "final")]
    pub is_final: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReversalBody {
    /// In the authorization's currency; omitted = everything still held.
    pub amount: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// The processor's refund id; also the idempotency key.
    pub id: String,
    pub card_id: String,
    pub authorization_id: Option<String>,
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdviceBody {
    /// The processor's advice id; also the idempotency key.
    pub id: String,
    pub card_id: String,
    pub amount: String,
    #[schema(value_type = String)]
    pub currency: Currency,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyInfo {
    pub name: String,
    pub version: String,
    pub file: String,
    #[schema(value_type = String)]
    pub currency: Currency,
    pub timezone: String,
    pub rules: usize,
    pub tests: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Transactions {
    pub card_id: String,
    pub authorizations: Vec<TxnDecision>,
    pub transfers: Vec<TxnTransfer>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TxnDecision {
    pub authorization_id: String,
    pub at_ms: i64,
    pub approved: bool,
    pub response_code: String,
    pub reason: String,
    pub rule: Option<String>,
    pub amount: String,
    pub currency: String,
    pub amount_approved: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TxnTransfer {
    pub transfer_id: String,
    pub kind: String,
    pub reference: String,
    pub at_ms: i64,
    /// Signed: positive credits the card.
    pub amount: String,
    pub currency: String,
}

// ---- helpers ----------------------------------------------------------------------------

fn json(status: StatusCode, body: Arc<str>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn to_json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    json(status, serde_json::to_string(v).unwrap_or_default().into())
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::bad_request("invalid_body", e.to_string()))
}

fn amount(s: &str) -> Result<Decimal, Problem> {
    parse_decimal(s).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            e.to_string(),
        )
    })
}

fn bearer(headers: &HeaderMap) -> Result<&str, Problem> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Problem::unauthorized("missing `Authorization: Bearer <API key>`"))
}

/// The program a request acts for; admin keys manage programs, not cards.
fn tenant(s: &Shared, headers: &HeaderMap) -> Result<String, Problem> {
    let key = bearer(headers)?;
    if s.is_admin(key) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "use a program API key for this call",
        ));
    }
    let program = s
        .engine
        .program_for_key(key)
        .ok_or_else(|| Problem::unauthorized("unknown API key"))?;
    s.rate.check(&program)?;
    Ok(program)
}

fn admin(s: &Shared, headers: &HeaderMap) -> Result<(), Problem> {
    let key = bearer(headers)?;
    if s.is_admin(key) {
        Ok(())
    } else if s.engine.program_for_key(key).is_some() {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this call needs the admin key",
        ))
    } else {
        Err(Problem::unauthorized("unknown API key"))
    }
}

/// `Idempotency-Key`, namespaced by tenant.
fn idem(headers: &HeaderMap, program: &str) -> Result<String, Problem> {
    let k = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Problem::bad_request(
                "missing_idempotency_key",
                "mutating calls need an Idempotency-Key header",
            )
        })?;
    if k.is_empty() || k.len() > 100 || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 100 visible ASCII characters",
        ));
    }
    Ok(format!("{program}/{k}"))
}

/// A card of the caller's program, or 404 — another tenant's card is just as absent.
fn own_card(s: &Shared, program: &str, card_id: &str) -> Result<(), Problem> {
    match s.engine.card_program(card_id) {
        Some(p) if p == program => Ok(()),
        _ => Err(Problem::not_found(
            "card_not_found",
            format!("unknown card `{card_id}`"),
        )),
    }
}

fn own_auth(s: &Shared, program: &str, auth_id: &str) -> Result<(), Problem> {
    match s.engine.auth_program(auth_id) {
        Some(p) if p == program => Ok(()),
        _ => Err(Problem::not_found(
            "authorization_not_found",
            format!("unknown authorization `{auth_id}`"),
        )),
    }
}

fn hook(s: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<String, Problem> {
    let program = tenant(s, headers)?;
    s.hooks.verify(headers, body, Utc::now().timestamp())?;
    Ok(program)
}

// ---- programs and keys ------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/programs", tag = "admin", request_body = CreateProgram,
    responses((status = 201, body = Program), (status = 401, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn create_program(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    admin(&s, &headers)?;
    let b: CreateProgram = parse(&body)?;
    let r = s.engine.create_program(Program {
        id: b.id,
        policy: b.policy,
        currency: b.currency,
    })?;
    Ok(json(StatusCode::CREATED, r))
}

#[utoipa::path(post, path = "/v1/programs/{id}/api_keys", tag = "admin", params(("id" = String, Path)),
    responses((status = 201, body = ApiKeyCreated), (status = 404, body = ProblemBody)))]
async fn create_api_key(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    admin(&s, &headers)?;
    let key = s.engine.create_api_key(&id, Utc::now())?;
    Ok(to_json(
        StatusCode::CREATED,
        &ApiKeyCreated {
            program: id,
            api_key: key,
        },
    ))
}

#[utoipa::path(post, path = "/v1/programs/{id}/deposits", tag = "funding", params(("id" = String, Path)), request_body = Deposit,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn deposit(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let program = tenant(&s, &headers)?;
    if program != id {
        return Err(Problem::not_found(
            "program_not_found",
            format!("unknown program `{id}`"),
        ));
    }
    let key = idem(&headers, &program)?;
    let b: Deposit = parse(&body)?;
    let r = s
        .engine
        .deposit(&key, &program, amount(&b.amount)?, b.currency, Utc::now())?;
    Ok(json(StatusCode::CREATED, r))
}

// ---- cardholders and cards --------------------------------------------------------------

#[utoipa::path(post, path = "/v1/cardholders", tag = "cards", request_body = CreateCardholder,
    responses((status = 201, body = Cardholder), (status = 409, body = ProblemBody)))]
async fn create_cardholder(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let program = tenant(&s, &headers)?;
    let key = idem(&headers, &program)?;
    let b: CreateCardholder = parse(&body)?;
    let h = Cardholder {
        id: b.id,
        program,
        name: b.name,
        kyc: b.kyc.unwrap_or(KycStatus::Pending),
        blocked: b.blocked,
    };
    Ok(json(
        StatusCode::CREATED,
        s.engine.create_cardholder(&key, h)?,
    ))
}

#[utoipa::path(patch, path = "/v1/cardholders/{id}", tag = "cards", params(("id" = String, Path)), request_body = UpdateCardholder,
    responses((status = 200, body = Cardholder), (status = 404, body = ProblemBody)))]
async fn update_cardholder(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let program = tenant(&s, &headers)?;
    let key = idem(&headers, &program)?;
    if s.engine.cardholder(&program, &id).is_none() {
        return Err(Problem::not_found(
            "cardholder_not_found",
            format!("unknown cardholder `{id}`"),
        ));
    }
    let b: UpdateCardholder = parse(&body)?;
    Ok(json(
        StatusCode::OK,
        s.engine
            .update_cardholder(&key, &program, &id, b.kyc, b.blocked)?,
    ))
}

#[utoipa::path(post, path = "/v1/cards", tag = "cards", request_body = CreateCard,
    responses((status = 201, body = CardResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn create_card(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let program = tenant(&s, &headers)?;
    let key = idem(&headers, &program)?;
    let b: CreateCard = parse(&body)?;
    if s.engine.cardholder(&program, &b.cardholder_id).is_none() {
        return Err(Problem::not_found(
            "cardholder_not_found",
            format!("unknown cardholder `{}`", b.cardholder_id),
        ));
    }
    let r = s.engine.issue_card(
        &key,
        &program,
        &b.cardholder_id,
        b.kind,
        b.currency,
        b.controls,
        b.active,
        Utc::now(),
    )?;
    Ok(json(StatusCode::CREATED, r))
}

#[utoipa::path(get, path = "/v1/cards/{id}", tag = "cards", params(("id" = String, Path)),
    responses((status = 200, body = CardResponse), (status = 404, body = ProblemBody)))]
async fn get_card(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let program = tenant(&s, &headers)?;
    own_card(&s, &program, &id)?;
    Ok(to_json(StatusCode::OK, &s.engine.get_card(&id)?))
}

async fn card_action(s: Shared, headers: HeaderMap, id: String, action: CardAction) -> ApiResult {
    let program = tenant(&s, &headers)?;
    let key = idem(&headers, &program)?;
    own_card(&s, &program, &id)?;
    Ok(json(
        StatusCode::OK,
        s.engine.card_action(&key, &id, action, Utc::now())?,
    ))
}

macro_rules! action_route {
    ($fn_name:ident, $path:literal, $action:expr) => {
        #[utoipa::path(post, path = $path, tag = "cards", params(("id" = String, Path)),
            responses((status = 200, body = CardResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
        async fn $fn_name(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
            card_action(s, headers, id, $action).await
        }
    };
}
action_route!(
    activate_card,
    "/v1/cards/{id}/activate",
    CardAction::Activate
);
action_route!(freeze_card, "/v1/cards/{id}/freeze", CardAction::Freeze);
action_route!(
    unfreeze_card,
    "/v1/cards/{id}/unfreeze",
    CardAction::Unfreeze
);
action_route!(
    terminate_card,
    "/v1/cards/{id}/terminate",
    CardAction::Terminate
);
action_route!(
    report_lost,
    "/v1/cards/{id}/report_lost",
    CardAction::ReportLost
);
action_route!(
    report_stolen,
    "/v1/cards/{id}/report_stolen",
    CardAction::ReportStolen
);

#[utoipa::path(put, path = "/v1/cards/{id}/controls", tag = "cards", params(("id" = String, Path)), request_body = SpendingControls,
    responses((status = 200, body = CardResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn set_controls(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let program = tenant(&s, &headers)?;
    let key = idem(&headers, &program)?;
    own_card(&s, &program, &id)?;
    let c: SpendingControls = parse(&body)?;
    Ok(json(StatusCode::OK, s.engine.set_controls(&key, &id, c)?))
}

async fn move_funds(
    s: Shared,
    headers: HeaderMap,
    id: String,
    body: Bytes,
    kind: TransferKind,
) -> ApiResult {
    let program = tenant(&s, &headers)?;
    let key = idem(&headers, &program)?;
    own_card(&s, &program, &id)?;
    let b: AmountBody = parse(&body)?;
    Ok(json(
        StatusCode::CREATED,
        s.engine
            .move_funds(&key, &id, kind, amount(&b.amount)?, Utc::now())?,
    ))
}

#[utoipa::path(post, path = "/v1/cards/{id}/fund", tag = "funding", params(("id" = String, Path)), request_body = AmountBody,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn fund_card(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    move_funds(s, headers, id, body, TransferKind::TopUp).await
}

#[utoipa::path(post, path = "/v1/cards/{id}/withdraw", tag = "funding", params(("id" = String, Path)), request_body = AmountBody,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn withdraw_card(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    move_funds(s, headers, id, body, TransferKind::Withdrawal).await
}

#[utoipa::path(get, path = "/v1/cards/{id}/balance", tag = "cards", params(("id" = String, Path)),
    responses((status = 200, body = Balance), (status = 404, body = ProblemBody)))]
async fn balance(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let program = tenant(&s, &headers)?;
    own_card(&s, &program, &id)?;
    Ok(to_json(StatusCode::OK, &s.engine.balance(&id)?))
}

#[utoipa::path(get, path = "/v1/cards/{id}/transactions", tag = "cards", params(("id" = String, Path)),
    responses((status = 200, body = Transactions), (status = 404, body = ProblemBody)))]
async fn transactions(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let program = tenant(&s, &headers)?;
    own_card(&s, &program, &id)?;
    let state = s.clone();
    let card = id.clone();
    let r = tokio::task::spawn_blocking(move || state.with_reader(|c| list_transactions(c, &card)))
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down",
            )
        })?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting down",
            )
        })?
        .map_err(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the transaction history could not be read",
            )
        })?;
    Ok(to_json(
        StatusCode::OK,
        &Transactions {
            card_id: id,
            authorizations: r.0,
            transfers: r.1,
        },
    ))
}

fn list_transactions(
    c: &rusqlite::Connection,
    card: &str,
) -> rusqlite::Result<(Vec<TxnDecision>, Vec<TxnTransfer>)> {
    let mut st = c.prepare_cached(
        "SELECT auth_id, at_ms, approved, response_code, reason, rule, amount, currency, amount_approved
         FROM decisions WHERE card_id = ?1 ORDER BY at_ms DESC, seq DESC LIMIT 100",
    )?;
    let a = st
        .query_map([card], |r| {
            Ok(TxnDecision {
                authorization_id: r.get(0)?,
                at_ms: r.get(1)?,
                approved: r.get(2)?,
                response_code: r.get(3)?,
                reason: r.get(4)?,
                rule: r.get(5)?,
                amount: r.get(6)?,
                currency: r.get(7)?,
                amount_approved: r.get(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut st = c.prepare_cached(
        "SELECT t.id, t.kind, t.reference, t.at_ms, p.amount, p.currency FROM postings p JOIN transfers t ON t.id = p.transfer_id
         WHERE p.account = ?1 ORDER BY t.seq DESC LIMIT 100",
    )?;
    let t = st
        .query_map([format!("card:{card}")], |r| {
            Ok(TxnTransfer {
                transfer_id: r.get(0)?,
                kind: r.get(1)?,
                reference: r.get(2)?,
                at_ms: r.get(3)?,
                amount: r.get(4)?,
                currency: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((a, t))
}

// ---- the authorization hook -------------------------------------------------------------

#[utoipa::path(post, path = "/v1/authorizations", tag = "authorizations", request_body = Authorization,
    responses((status = 200, description = "a decision: approved or declined with its ISO 8583 code", body = AuthorizationResponse),
        (status = 400, body = ProblemBody), (status = 401, body = ProblemBody), (status = 409, body = ProblemBody)))]
async fn authorize(
    State(s): State<Shared>,
    rid: Option<axum::Extension<super::RequestId>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let arrival = Instant::now();
    let request_id = rid.map(|r| r.0 .0).unwrap_or_default();
    let program = hook(&s, &headers, &body)?;
    let txn: Authorization = parse(&body)?;
    let budget = Duration::from_millis(s.config.deadline_ms);
    let now = Utc::now();
    let (a, seq) = s
        .engine
        .authorize_traced(Some(&program), &txn, now, &request_id)?;
    let remaining = budget.saturating_sub(arrival.elapsed());
    let durable = match s.engine.store() {
        Some(store) if seq > 0 => tokio::time::timeout(remaining, store.wait_async(seq))
            .await
            .is_ok(),
        _ => true,
    };
    let (body, code, rule) = if durable && arrival.elapsed() <= budget {
        (a.json, a.response_code, a.rule)
    } else {
        // Too late: answer 91 and void whatever hold the decision placed.
        metrics::counter!("spendgate_deadline_missed_total").increment(1);
        (
            s.engine.abandon_authorization(&txn, now),
            "91".to_string(),
            None,
        )
    };
    let latency = arrival.elapsed();
    metrics::counter!("spendgate_decisions_total", "code" => code.clone(), "rule" => rule.clone().unwrap_or_default()).increment(1);
    metrics::histogram!("spendgate_decision_latency_seconds").record(latency.as_secs_f64());
    tracing::info!(request_id = %request_id, card = %txn.card_id, authorization = %txn.id, code = %code, rule = ?rule, replayed = a.replayed, latency_us = latency.as_micros() as u64, "decision");
    Ok(json(StatusCode::OK, body))
}

#[utoipa::path(post, path = "/v1/simulate", tag = "authorizations", request_body = Authorization,
    responses((status = 200, description = "the decision with every rule traced; nothing is changed or stored", body = DecisionSummary),
        (status = 404, body = ProblemBody)))]
async fn simulate(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let program = tenant(&s, &headers)?;
    let txn: Authorization = parse(&body)?;
    own_card(&s, &program, &txn.card_id)?;
    Ok(to_json(
        StatusCode::OK,
        &s.engine.simulate(&txn, Utc::now())?,
    ))
}

#[utoipa::path(post, path = "/v1/authorizations/{id}/captures", tag = "authorizations", params(("id" = String, Path)), request_body = CaptureBody,
    responses((status = 201, body = HoldResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn capture(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let program = hook(&s, &headers, &body)?;
    let key = idem(&headers, &program)?;
    own_auth(&s, &program, &id)?;
    let b: CaptureBody = parse(&body)?;
    Ok(json(
        StatusCode::CREATED,
        s.engine
            .capture(&key, &id, amount(&b.amount)?, b.is_final, Utc::now())?,
    ))
}

#[utoipa::path(post, path = "/v1/authorizations/{id}/reversals", tag = "authorizations", params(("id" = String, Path)), request_body = ReversalBody,
    responses((status = 201, description = "matched: false when the authorization is unknown (recorded and answered)", body = ReversalResponse),
        (status = 422, body = ProblemBody)))]
async fn reversal(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let program = hook(&s, &headers, &body)?;
    let key = idem(&headers, &program)?;
    let b: ReversalBody = parse(&body)?;
    let a = b.amount.as_deref().map(amount).transpose()?;
    match s.engine.auth_program(&id) {
        Some(p) if p != program => {
            // Another tenant's authorization is unknown here, and never touched.
            let r = ReversalResponse {
                authorization_id: id,
                matched: false,
                released: None,
                hold_status: None,
                available_after: None,
            };
            Ok(to_json(StatusCode::CREATED, &r))
        }
        _ => Ok(json(
            StatusCode::CREATED,
            s.engine
                .reverse_for(Some(&program), &key, &id, a, Utc::now())?,
        )),
    }
}

#[utoipa::path(post, path = "/v1/advices", tag = "authorizations", request_body = AdviceBody,
    responses((status = 201, description = "a stand-in advice posted; may take the card negative", body = TransferResponse), (status = 404, body = ProblemBody)))]
async fn advice(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let program = hook(&s, &headers, &body)?;
    let b: AdviceBody = parse(&body)?;
    own_card(&s, &program, &b.card_id)?;
    let key = format!("{program}/{}", b.id);
    Ok(json(
        StatusCode::CREATED,
        s.engine
            .advice(&key, &b.card_id, amount(&b.amount)?, b.currency, Utc::now())?,
    ))
}

#[utoipa::path(post, path = "/v1/refunds", tag = "authorizations", request_body = RefundBody,
    responses((status = 201, body = TransferResponse), (status = 404, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn refund(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let program = hook(&s, &headers, &body)?;
    let b: RefundBody = parse(&body)?;
    own_card(&s, &program, &b.card_id)?;
    if let Some(a) = &b.authorization_id {
        own_auth(&s, &program, a)?;
    }
    let key = format!("{program}/{}", b.id);
    let r = s.engine.refund(
        &key,
        &b.card_id,
        b.authorization_id.as_deref(),
        amount(&b.amount)?,
        b.currency,
        Utc::now(),
    )?;
    Ok(json(StatusCode::CREATED, r))
}

// ---- policies and operations ------------------------------------------------------------

#[utoipa::path(get, path = "/v1/policies", tag = "policies", responses((status = 200, body = Vec<PolicyInfo>)))]
async fn list_policies(State(s): State<Shared>, headers: HeaderMap) -> ApiResult {
    let key = bearer(&headers)?;
    if !s.is_admin(key) && s.engine.program_for_key(key).is_none() {
        return Err(Problem::unauthorized("unknown API key"));
    }
    let set = s.engine.policies();
    let list: Vec<PolicyInfo> = set
        .policies
        .values()
        .map(|p| PolicyInfo {
            name: p.name.clone(),
            version: p.version.clone(),
            file: p.file.display().to_string(),
            currency: p.currency,
            timezone: p.timezone.to_string(),
            rules: p.rules.len(),
            tests: p.tests.len(),
        })
        .collect();
    Ok(to_json(StatusCode::OK, &list))
}

#[utoipa::path(post, path = "/v1/policies/reload", tag = "policies",
    responses((status = 200, description = "validated, tested and swapped in"), (status = 422, description = "refused; the old policies stay live", body = ProblemBody)))]
async fn reload(State(s): State<Shared>, headers: HeaderMap) -> ApiResult {
    admin(&s, &headers)?;
    let state = s.clone();
    match tokio::task::spawn_blocking(move || state.reload()).await {
        Ok(Ok(versions)) => {
            let v: Vec<_> = versions
                .into_iter()
                .map(|(name, version)| serde_json::json!({"name": name, "version": version}))
                .collect();
            Ok(to_json(
                StatusCode::OK,
                &serde_json::json!({ "reloaded": v }),
            ))
        }
        Ok(Err(errors)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy",
            errors.join("\n"),
        )),
        Err(_) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reload failed",
        )),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "the process is up")))]
async fn healthz() -> Response {
    to_json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready for traffic"), (status = 503, body = ProblemBody)))]
async fn readyz(State(s): State<Shared>) -> ApiResult {
    if s.ready.load(std::sync::atomic::Ordering::SeqCst) && s.engine.store().is_some() {
        Ok(to_json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "cards": s.engine.card_count()}),
        ))
    } else {
        Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "not ready",
        ))
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
async fn metrics_endpoint(State(s): State<Shared>) -> Response {
    if let Some(store) = s.engine.store() {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &store.stats;
        metrics::gauge!("spendgate_store_queue_depth").set(st.queue_depth.load(Relaxed) as f64);
        metrics::gauge!("spendgate_store_batches").set(st.batches.load(Relaxed) as f64);
        metrics::gauge!("spendgate_store_writes").set(st.writes.load(Relaxed) as f64);
    }
    metrics::gauge!("spendgate_cards").set(s.engine.card_count() as f64);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "this document")))]
async fn openapi_json() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        openapi(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "spendgate",
        description = "Authorization decisions and spend controls for card issuers"
    ),
    paths(
        create_program,
        create_api_key,
        deposit,
        create_cardholder,
        update_cardholder,
        create_card,
        get_card,
        activate_card,
        freeze_card,
        unfreeze_card,
        terminate_card,
        report_lost,
        report_stolen,
        set_controls,
        fund_card,
        withdraw_card,
        balance,
        transactions,
        authorize,
        simulate,
        capture,
        reversal,
        advice,
        refund,
        list_policies,
        reload,
        healthz,
        readyz,
        metrics_endpoint,
        openapi_json
    ),
    components(schemas(ProblemBody))
)]
pub struct ApiDoc;

/// The OpenAPI 3.1 document as JSON.
pub fn openapi() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// Every route: (method, path, handler). The router is built from this list.
pub fn routes() -> Vec<(&'static str, &'static str, MethodRouter<Shared>)> {
    vec![
        ("post", "/v1/programs", post(create_program)),
        ("post", "/v1/programs/{id}/api_keys", post(create_api_key)),
        ("post", "/v1/programs/{id}/deposits", post(deposit)),
        ("post", "/v1/cardholders", post(create_cardholder)),
        ("patch", "/v1/cardholders/{id}", patch(update_cardholder)),
        ("post", "/v1/cards", post(create_card)),
        ("get", "/v1/cards/{id}", get(get_card)),
        ("post", "/v1/cards/{id}/activate", post(activate_card)),
        ("post", "/v1/cards/{id}/freeze", post(freeze_card)),
        ("post", "/v1/cards/{id}/unfreeze", post(unfreeze_card)),
        ("post", "/v1/cards/{id}/terminate", post(terminate_card)),
        ("post", "/v1/cards/{id}/report_lost", post(report_lost)),
        ("post", "/v1/cards/{id}/report_stolen", post(report_stolen)),
        ("put", "/v1/cards/{id}/controls", put(set_controls)),
        ("post", "/v1/cards/{id}/fund", post(fund_card)),
        ("post", "/v1/cards/{id}/withdraw", post(withdraw_card)),
        ("get", "/v1/cards/{id}/balance", get(balance)),
        ("get", "/v1/cards/{id}/transactions", get(transactions)),
        ("post", "/v1/authorizations", post(authorize)),
        ("post", "/v1/simulate", post(simulate)),
        ("post", "/v1/authorizations/{id}/captures", post(capture)),
        ("post", "/v1/authorizations/{id}/reversals", post(reversal)),
        ("post", "/v1/advices", post(advice)),
        ("post", "/v1/refunds", post(refund)),
        ("get", "/v1/policies", get(list_policies)),
        ("post", "/v1/policies/reload", post(reload)),
        ("get", "/healthz", get(healthz)),
        ("get", "/readyz", get(readyz)),
        ("get", "/metrics", get(metrics_endpoint)),
        ("get", "/openapi.json", get(openapi_json)),
    ]
}
