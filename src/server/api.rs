//! The JSON API under `/api/`. Every handler that touches a user's data takes
//! an [`AuthUser`] (or [`AdminUser`]), so it cannot run unauthenticated, and
//! checks membership itself before reading or changing a chat.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::{self, AdminUser, AuthUser, canonical_username, ms};
use crate::chat::{encode, encode_logged};
use crate::client::crypto::PublicKeys;
use crate::config::RegistrationMode;
use crate::error::ApiError;
use crate::protocol::{
    AccountKeys, AccountRequest, AddMemberRequest, B64, ChangePasswordRequest, ChatInfo,
    CreateChatRequest, HistoryPage, LoginRequest, LoginResponse, Me, Member, MessageRecord,
    PreloginRequest, PreloginResponse, RenameChatRequest, ServerFrame, UserEntry, WrappedKey,
    close,
};
use crate::server::App;
use crate::store::{
    Admission, ChatRow, MessageRow, NewCredentials, NewUser, SignIn, StoreError, Throttle, UserRow,
};

/// The query-string extractor, with errors in the API's own shape.
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(rejection) => Err(ApiError::bad_request("bad_request", rejection.body_text())),
        }
    }
}

/// The URL path's segments (a chat id, a username, a chunk index), with
/// errors in the API's own shape: a segment that is not what the route
/// takes (`chunks/abc`, bad percent-encoding) is `400 bad_request` in JSON.
pub struct Segments<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S>
    for Segments<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Segments(v)),
            Err(rejection) if rejection.status().is_client_error() => {
                Err(ApiError::bad_request("bad_request", rejection.body_text()))
            }
            Err(rejection) => Err(ApiError::internal(rejection.body_text())),
        }
    }
}

/// The JSON body extractor, with errors in the API's own shape.
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(ApiError::new(
                rejection.status(),
                "bad_request",
                rejection.body_text(),
            )),
        }
    }
}

fn me_of(user: &UserRow) -> Me {
    Me {
        username: user.username.clone(),
        is_admin: user.is_admin,
        created_at: user.created_at,
    }
}

fn account_keys(user: &UserRow) -> AccountKeys {
    AccountKeys {
        salt: user.salt.clone().into(),
        iterations: user.iterations,
        enc_public: user.enc_public.clone().into(),
        sig_public: user.sig_public.clone().into(),
        enc_private: user.enc_private.clone(),
        sig_private: user.sig_private.clone(),
    }
}

/// The chat as `user_id` sees it.
pub fn chat_info(chat: &ChatRow, user_id: i64) -> ChatInfo {
    ChatInfo {
        id: chat.id.clone(),
        kind: chat.kind,
        name: chat.name.clone(),
        members: chat
            .members
            .iter()
            .map(|m| Member {
                username: m.username.clone(),
                role: m.role.clone(),
            })
            .collect(),
        last_seq: chat.last_seq,
        read_seq: chat
            .members
            .iter()
            .find(|m| m.user_id == user_id)
            .map_or(0, |m| m.read_seq),
        created_at: chat.created_at,
    }
}

/// A stored message on the wire, as `reader` (a username) receives it:
/// with only the reader's own wrapped key (PROTOCOL.md §2.7).
pub fn message_record(mut m: MessageRow, reader: &str) -> MessageRecord {
    m.envelope.keys.retain(|name, _| name == reader);
    MessageRecord {
        id: m.id,
        chat: m.chat_id,
        sender: m.sender,
        seq: m.seq,
        ts: m.ts,
        envelope: m.envelope,
    }
}

/// Tells every member's sockets about the chat's new state; `event` is
/// what happened, for the members' chat logs.
fn push_chat(app: &App, chat: &ChatRow, event: &str) {
    for member in &chat.members {
        let frame = encode_logged(
            &ServerFrame::Chat {
                chat: chat_info(chat, member.user_id),
            },
            &chat.id,
            event,
        );
        app.hub.send_to_users([member.user_id], &frame, None);
    }
}

fn check_len(what: &'static str, value: &B64, min: usize, max: usize) -> Result<(), ApiError> {
    if value.len() < min || value.len() > max {
        return Err(ApiError::bad_request(
            "invalid_keys",
            format!("{what} has the wrong length ({} bytes).", value.len()),
        ));
    }
    Ok(())
}

fn check_wrapped(what: &'static str, w: &WrappedKey) -> Result<(), ApiError> {
    check_len(what, &w.iv, 12, 12)?;
    check_len(what, &w.ct, 17, 8192)
}

fn check_credentials(
    app: &App,
    salt: &B64,
    iterations: u32,
    auth_key: &B64,
    enc: &WrappedKey,
    sig: &WrappedKey,
) -> Result<(), ApiError> {
    check_len("salt", salt, 16, 16)?;
    check_len("auth_key", auth_key, 32, 32)?;
    check_wrapped("enc_private", enc)?;
    check_wrapped("sig_private", sig)?;
    let want = app.config.limits.pbkdf2_iterations;
    if iterations != want {
        return Err(ApiError::bad_request(
            "invalid_keys",
            format!("iterations must be {want}."),
        ));
    }
    Ok(())
}

/// Checks the material of a new (or reset) account; returns its canonical
/// username.
fn check_account(app: &App, req: &AccountRequest) -> Result<String, ApiError> {
    let username = canonical_username(&req.username)?;
    check_credentials(
        app,
        &req.salt,
        req.iterations,
        &req.auth_key,
        &req.enc_private,
        &req.sig_private,
    )?;
    PublicKeys::from_spki(&req.enc_public.0, &req.sig_public.0).map_err(|_| {
        ApiError::bad_request(
            "invalid_keys",
            "The public keys must be RSA-4096 (e = 65537) in SPKI DER.",
        )
    })?;
    Ok(username)
}

/// The store's row for a checked account: the auth key hashed with Argon2id.
async fn new_user(app: &App, username: String, req: AccountRequest) -> Result<NewUser, ApiError> {
    Ok(NewUser {
        auth_hash: app.passwords.hash(req.auth_key.0).await?,
        username,
        salt: req.salt.0,
        iterations: req.iterations,
        enc_public: req.enc_public.0,
        sig_public: req.sig_public.0,
        enc_private: req.enc_private,
        sig_private: req.sig_private,
    })
}

/// Counts a sign-in attempt (login or reset) against `ip` and, if the name is
/// valid, `name`, before any key is checked. `Err(ms)` if either is locked:
/// the attempt is refused and not counted.
async fn count_attempt(
    app: &App,
    name: Option<String>,
    ip: String,
    now: i64,
) -> Result<Result<Vec<(Throttle, Throttle)>, i64>, ApiError> {
    let limits = app.config.limits.clone();
    Ok(app
        .db
        .call(move |s| {
            let mut entries = vec![("ip", ip.as_str())];
            if let Some(n) = &name {
                entries.push(("user", n.as_str()));
            }
            s.count_attempt(&entries, now, |kind, t| match kind {
                "user" => auth::user_failure(t, now, &limits),
                _ => auth::ip_failure(t, now, &limits),
            })
        })
        .await?
        .map_err(|until| until - now))
}

/// Writes `event` (an attempt refused during a lock) to the audit log, with
/// `actor`, if it is the first such refusal from `ip` during the lock that
/// ends at `locked_until`: a client that keeps trying during a lock, under
/// one name or many, would otherwise add a record and a commit per attempt.
async fn audit_refusal(
    app: &App,
    event: &'static str,
    actor: &str,
    ip: &str,
    locked_until: i64,
    now: i64,
) {
    let first = {
        let mut seen = app
            .refusals_audited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: locks that ended are forgotten once it grows.
        if seen.len() >= REFUSALS_KEPT {
            seen.retain(|(_, _, until)| *until > now);
            if seen.len() >= REFUSALS_KEPT {
                seen.clear();
            }
        }
        seen.insert((event, ip.to_owned(), locked_until))
    };
    if first {
        app.audit(event, actor, format!("ip={ip}")).await;
    }
}

/// How many (event, address, lock end) the refusal audit remembers at most.
const REFUSALS_KEPT: usize = 4096;

/// Writes to the audit log the locks a failed attempt set: the username's
/// (its counter after the attempt, if counted) and the address's, if this
/// attempt locked it. SECURITY.md §3: every lock is audited.
async fn audit_locks(
    app: &App,
    actor: &str,
    ip: Option<(&str, Throttle, Throttle)>,
    user_after: Option<Throttle>,
    now: i64,
) {
    if let Some(t) = user_after.filter(|t| t.locked_until > now) {
        let detail = format!("until={} failures={}", t.locked_until, t.failures);
        app.audit("user_locked", actor, detail).await;
    }
    if let Some((ip, before, after)) = ip
        && after.locked_until > now
        && before.locked_until <= now
    {
        app.audit("ip_locked", ip, format!("until={}", after.locked_until))
            .await;
    }
}

/// Tells every open socket about a new or changed directory entry.
fn announce_user(app: &App, user: &UserRow) {
    let online: BTreeSet<String> = app.hub.online().into_iter().collect();
    let frame = encode(&ServerFrame::User {
        user: user_entry(user.clone(), &online),
    });
    app.hub.broadcast(&frame);
}

/// `GET /api/keys`: the signed-in user's own salt, public keys and wrapped
/// private keys, so a client can re-wrap them (password change) without
/// signing in again.
pub async fn own_keys(user: AuthUser) -> Json<AccountKeys> {
    Json(account_keys(&user.user))
}

/// Creates a session for `user` and returns the login answer with its cookie.
async fn open_session(
    app: &App,
    user: &UserRow,
    ip: &str,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let (token, hash) = auth::new_session_token();
    let now = app.clock.now_ms();
    let (user_id, ip) = (user.id, ip.to_owned());
    app.db
        .call(move |s| s.create_session(&hash, user_id, now, &ip))
        .await?;
    Ok(session_response(app, user, &token, status))
}

/// Settles a successful sign-in (or reset) attempt of `name` from `ip`,
/// records `event` in the audit log and opens a session, with one commit;
/// answers with the session's cookie.
async fn signed_in(
    app: &App,
    user: &UserRow,
    name: String,
    ip: &str,
    (ip_before, ip_after): (Throttle, Throttle),
    event: &'static str,
) -> Result<Response, ApiError> {
    let (token, hash) = auth::new_session_token();
    let now = app.clock.now_ms();
    let detail = format!("ip={ip}");
    let (user_id, actor, ip_key, record) = (
        user.id,
        user.username.clone(),
        ip.to_owned(),
        detail.clone(),
    );
    app.db
        .call(move |s| {
            let sign_in = SignIn {
                now,
                event,
                actor: &actor,
                detail: &record,
                token_hash: &hash,
                user_id,
            };
            s.settle_success(&name, &ip_key, ip_before, ip_after, &sign_in)
        })
        .await?;
    app.audit_file(event, &user.username, &detail, now);
    Ok(session_response(app, user, &token, StatusCode::OK))
}

/// The answer to a sign-in: the account and its keys, and the session
/// cookie.
fn session_response(app: &App, user: &UserRow, token: &str, status: StatusCode) -> Response {
    let max_age = app.config.limits.session_absolute.as_secs();
    let body = LoginResponse {
        user: me_of(user),
        keys: account_keys(user),
    };
    (
        status,
        [(header::SET_COOKIE, auth::session_cookie(token, max_age))],
        Json(body),
    )
        .into_response()
}

/// `POST /api/prelogin`: the salt and iteration count to derive keys with.
/// Unknown (or invalid) usernames get a stable fake salt.
pub async fn prelogin(
    State(app): State<App>,
    Body(req): Body<PreloginRequest>,
) -> Result<Json<PreloginResponse>, ApiError> {
    let name = req.username.trim().to_ascii_lowercase();
    let lookup = name.clone();
    let user = app.db.call(move |s| s.user_by_name(&lookup)).await?;
    Ok(Json(match user {
        Some(u) => PreloginResponse {
            salt: u.salt.into(),
            iterations: u.iterations,
        },
        None => PreloginResponse {
            salt: auth::fake_salt(&app.server_secret, &name).to_vec().into(),
            iterations: app.config.limits.pbkdf2_iterations,
        },
    }))
}

/// `POST /api/register`: creates an account and signs it in.
pub async fn register(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(req): Body<AccountRequest>,
) -> Result<Response, ApiError> {
    let username = check_account(&app, &req)?;
    if req.code.is_some() {
        return Err(ApiError::bad_request(
            "bad_request",
            "A reset code goes to /api/reset, not /api/register.",
        ));
    }
    let mode = app.registration_mode().await?;
    let admission = match mode {
        RegistrationMode::Open => Admission::Open,
        RegistrationMode::Closed => Admission::FirstOnly,
        RegistrationMode::Invite => match req.invite.as_deref().filter(|c| !c.trim().is_empty()) {
            Some(code) => Admission::Invite(auth::invite_hash(code)),
            None => Admission::FirstOnly,
        },
    };
    let refusal = |code: String| match code.as_str() {
        "username_taken" => ApiError::conflict("username_taken", "That username is taken."),
        "invalid_invite" => ApiError::forbidden(
            "invalid_invite",
            "That invite code is not valid (wrong, used up or expired).",
        ),
        _ if mode == RegistrationMode::Invite => ApiError::forbidden(
            "invite_required",
            "An invite code from an administrator is needed to create an account.",
        ),
        _ => ApiError::forbidden(
            "registration_closed",
            "Registration is closed on this server.",
        ),
    };
    // Refused without the password's hash (a whole core for a moment), so
    // that refused attempts cannot keep the hashing threads from sign-ins.
    let (name, checked) = (username.clone(), admission.clone());
    let now = app.clock.now_ms();
    match app
        .db
        .call(move |s| s.admission_precheck(&name, &checked, now))
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict(code)) => return Err(refusal(code)),
        Err(e) => return Err(e.into()),
    }
    let new = new_user(&app, username, req).await?;
    let now = app.clock.now_ms();
    let user = match app
        .db
        .call(move |s| s.create_user(new, admission, now))
        .await
    {
        Ok(user) => user,
        Err(StoreError::Conflict(code)) => return Err(refusal(code)),
        Err(e) => return Err(e.into()),
    };
    app.audit(
        "register",
        &user.username,
        format!("admin={} ip={}", user.is_admin, peer.ip()),
    )
    .await;
    announce_user(&app, &user);
    open_session(&app, &user, &peer.ip().to_string(), StatusCode::CREATED).await
}

/// `POST /api/login`: checks the auth key, with throttling per username and
/// per address. Every failure answers the same way.
pub async fn login(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(req): Body<LoginRequest>,
) -> Result<Response, ApiError> {
    let ip = peer.ip().to_string();
    let now = app.clock.now_ms();
    // A name that breaks the rules cannot exist: it costs a dummy
    // verification and counts against the address only.
    let name = canonical_username(&req.username).ok();
    let actor = name.clone().unwrap_or_else(|| "(invalid name)".into());
    let counters = match count_attempt(&app, name.clone(), ip.clone(), now).await? {
        Err(wait) => {
            audit_refusal(&app, "login_refused_locked", &actor, &ip, now + wait, now).await;
            return Err(auth::login_failed(Some(u64::try_from(wait).unwrap_or(1))));
        }
        Ok(counters) => counters,
    };
    let lookup = name.clone();
    let user = match lookup {
        Some(n) => app.db.call(move |s| s.user_by_name(&n)).await?,
        None => None,
    };
    let (ip_before, ip_after) = counters[0];
    let user_after = counters.get(1).map(|c| c.1);
    let hash = user.as_ref().map(|u| u.auth_hash.clone());
    let verified = req.auth_key.len() == 32 && app.passwords.verify(hash, req.auth_key.0).await?;
    match (user, name) {
        (Some(user), Some(name)) if verified && !user.disabled => {
            signed_in(&app, &user, name, &ip, (ip_before, ip_after), "login").await
        }
        _ => {
            let failures = user_after.map_or(0, |t| t.failures);
            app.audit(
                "login_failed",
                &actor,
                format!("ip={ip} failures={failures}"),
            )
            .await;
            audit_locks(
                &app,
                &actor,
                Some((&ip, ip_before, ip_after)),
                user_after,
                now,
            )
            .await;
            Err(auth::login_failed(None))
        }
    }
}

/// `POST /api/reset`: completes an administrator's reset with its one-time
/// code. Throttled like sign-in; every failure answers the same way.
pub async fn complete_reset(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(req): Body<AccountRequest>,
) -> Result<Response, ApiError> {
    let failed = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "reset_failed",
            "That reset code is wrong or has expired. Ask an administrator for a new one.",
        )
    };
    let name = check_account(&app, &req)?;
    let (Some(code), None) = (req.code.clone(), &req.invite) else {
        return Err(ApiError::bad_request(
            "bad_request",
            "A reset needs the one-time code (and no invite).",
        ));
    };
    let ip = peer.ip().to_string();
    let now = app.clock.now_ms();
    let (ip_before, ip_after, user_after) =
        match count_attempt(&app, Some(name.clone()), ip.clone(), now).await? {
            Err(wait) => {
                audit_refusal(&app, "reset_refused_locked", &name, &ip, now + wait, now).await;
                return Err(auth::login_failed(Some(u64::try_from(wait).unwrap_or(1))));
            }
            Ok(counters) => (counters[0].0, counters[0].1, counters[1].1),
        };
    let new = new_user(&app, name.clone(), req).await?;
    let code_hash = auth::invite_hash(&code);
    let n = name.clone();
    let done = app
        .db
        .call(move |s| s.complete_reset(&n, &code_hash, now, new))
        .await?;
    let Some(user) = done else {
        app.audit("reset_failed", &name, format!("ip={ip}")).await;
        audit_locks(
            &app,
            &name,
            Some((&ip, ip_before, ip_after)),
            Some(user_after),
            now,
        )
        .await;
        return Err(failed());
    };
    announce_user(&app, &user);
    let answer = signed_in(
        &app,
        &user,
        name,
        &ip,
        (ip_before, ip_after),
        "reset_completed",
    )
    .await;
    if answer.is_err() {
        // The reset itself is stored: its audit record must be too.
        app.audit("reset_completed", &user.username, format!("ip={ip}"))
            .await;
    }
    answer
}

/// `POST /api/logout`: ends this session and closes its sockets.
pub async fn logout(State(app): State<App>, user: AuthUser) -> Result<Response, ApiError> {
    let hash = user.session;
    app.db.call(move |s| s.delete_session(&hash)).await?;
    app.hub.close_sessions(&[hash], close::SESSION_ENDED);
    app.audit("logout", &user.user.username, String::new())
        .await;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::clear_cookie())],
    )
        .into_response())
}

/// `POST /api/logout-all`: ends every session of the user, everywhere.
pub async fn logout_all(State(app): State<App>, user: AuthUser) -> Result<Response, ApiError> {
    let id = user.user.id;
    let ended = app.db.call(move |s| s.delete_user_sessions(id)).await?;
    app.hub.close_sessions(&ended, close::SESSION_ENDED);
    app.audit(
        "logout_all",
        &user.user.username,
        format!("sessions={}", ended.len()),
    )
    .await;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::clear_cookie())],
    )
        .into_response())
}

/// `GET /api/me`.
pub async fn me(user: AuthUser) -> Json<Me> {
    Json(me_of(&user.user))
}

/// `POST /api/change-password`: proves the old auth key, then swaps salt,
/// hash and wrapped keys at once and ends every other session.
pub async fn change_password(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: AuthUser,
    Body(req): Body<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    check_credentials(
        &app,
        &req.salt,
        req.iterations,
        &req.auth_key,
        &req.enc_private,
        &req.sig_private,
    )?;
    // The same lock as sign-in: a stolen session must not become a way to
    // guess the password. The attempt is counted, with the lock's check,
    // before the old password is checked, so that parallel guesses cannot
    // slip past a lock (SECURITY.md §3).
    let now = app.clock.now_ms();
    let name = user.user.username.clone();
    let limits = app.config.limits.clone();
    let counted = app
        .db
        .call(move |s| {
            s.count_attempt(&[("user", name.as_str())], now, |_, t| {
                auth::user_failure(t, now, &limits)
            })
        })
        .await?;
    let user_after = match counted {
        Err(locked_until) => {
            let ip = peer.ip().to_string();
            let actor = &user.user.username;
            audit_refusal(
                &app,
                "password_change_refused_locked",
                actor,
                &ip,
                locked_until,
                now,
            )
            .await;
            return Err(auth::login_failed(Some(
                u64::try_from(locked_until - now).unwrap_or(1),
            )));
        }
        Ok(counters) => counters[0].1,
    };
    let ok = req.old_auth_key.len() == 32
        && app
            .passwords
            .verify(Some(user.user.auth_hash.clone()), req.old_auth_key.0)
            .await?;
    if !ok {
        app.audit("password_change_failed", &user.user.username, String::new())
            .await;
        audit_locks(&app, &user.user.username, None, Some(user_after), now).await;
        return Err(ApiError::forbidden(
            "wrong_password",
            "The current password is not correct.",
        ));
    }
    // The right password: the attempt counted for it is cleared, as a
    // sign-in's is.
    let name = user.user.username.clone();
    app.db
        .call(move |s| s.update_throttle("user", &name, |_| Throttle::default()))
        .await?;
    let auth_hash = app.passwords.hash(req.auth_key.0).await?;
    let creds = NewCredentials {
        salt: req.salt.0,
        iterations: req.iterations,
        auth_hash,
        enc_private: req.enc_private,
        sig_private: req.sig_private,
    };
    let (id, keep) = (user.user.id, user.session);
    let ended = app
        .db
        .call(move |s| s.change_credentials(id, creds, &keep))
        .await?;
    app.hub.close_sessions(&ended, close::SESSION_ENDED);
    app.audit(
        "password_changed",
        &user.user.username,
        format!("ended_sessions={}", ended.len()),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

fn user_entry(u: UserRow, online: &BTreeSet<String>) -> UserEntry {
    UserEntry {
        online: online.contains(&u.username),
        username: u.username,
        enc_public: u.enc_public.into(),
        sig_public: u.sig_public.into(),
        is_admin: u.is_admin,
        disabled: u.disabled,
    }
}

/// `GET /api/users`: the directory, with public keys and presence.
pub async fn users(
    State(app): State<App>,
    _user: AuthUser,
) -> Result<Json<Vec<UserEntry>>, ApiError> {
    let rows = app.db.call(|s| s.users()).await?;
    let online: BTreeSet<String> = app.hub.online().into_iter().collect();
    Ok(Json(
        rows.into_iter().map(|u| user_entry(u, &online)).collect(),
    ))
}

/// `GET /api/users/{name}`.
pub async fn user(
    State(app): State<App>,
    _user: AuthUser,
    Segments(name): Segments<String>,
) -> Result<Json<UserEntry>, ApiError> {
    let name = name.to_ascii_lowercase();
    let row = app
        .db
        .call(move |s| s.user_by_name(&name))
        .await?
        .ok_or_else(|| ApiError::not_found("No such user."))?;
    let online: BTreeSet<String> = app.hub.online().into_iter().collect();
    Ok(Json(user_entry(row, &online)))
}

/// `GET /api/chats`: the caller's chats.
pub async fn chats(
    State(app): State<App>,
    user: AuthUser,
) -> Result<Json<Vec<ChatInfo>>, ApiError> {
    let id = user.user.id;
    let rows = app.db.call(move |s| s.chats_of(id)).await?;
    Ok(Json(rows.iter().map(|c| chat_info(c, id)).collect()))
}

/// The chat if the caller is a member; 404 otherwise (so non-members cannot
/// even learn that it exists).
async fn member_chat(app: &App, user: &AuthUser, chat_id: String) -> Result<ChatRow, ApiError> {
    let chat = app.db.call(move |s| s.chat(&chat_id)).await?;
    match chat {
        Some(chat) if chat.has_member(user.user.id) => Ok(chat),
        _ => Err(ApiError::not_found("No such chat.")),
    }
}

async fn active_user(app: &App, raw: &str) -> Result<UserRow, ApiError> {
    let name = raw.trim().to_ascii_lowercase();
    match app.db.call(move |s| s.user_by_name(&name)).await? {
        Some(u) if !u.disabled => Ok(u),
        _ => Err(ApiError::not_found(format!(
            "No user named {:?}.",
            raw.trim()
        ))),
    }
}

fn group_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "A group name has 1 to 64 characters and no control characters.",
        ));
    }
    Ok(name.to_owned())
}

/// `POST /api/chats`: opens a direct chat or creates a group.
pub async fn create_chat(
    State(app): State<App>,
    user: AuthUser,
    Body(req): Body<CreateChatRequest>,
) -> Result<Response, ApiError> {
    let now = app.clock.now_ms();
    let me_id = user.user.id;
    let new_id = uuid::Uuid::new_v4().to_string();
    match req {
        CreateChatRequest::Direct { peer } => {
            let peer = active_user(&app, &peer).await?;
            if peer.id == me_id {
                return Err(ApiError::bad_request(
                    "invalid_member",
                    "A direct chat needs another person.",
                ));
            }
            let (chat, created) = app
                .db
                .call(move |s| s.direct_chat(me_id, peer.id, &new_id, now))
                .await?;
            if created {
                push_chat(
                    &app,
                    &chat,
                    &format!("chat-created by={}", user.user.username),
                );
            }
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(chat_info(&chat, me_id))).into_response())
        }
        CreateChatRequest::Group { name, members } => {
            let name = group_name(&name)?;
            let max = app.config.limits.max_group_members;
            let too_many = || {
                ApiError::bad_request(
                    "too_many_members",
                    format!("A group has at most {max} members."),
                )
            };
            // More distinct names than a group holds: refused before any is
            // looked up (a body may list some 200 000).
            let me_name = user.user.username.to_ascii_lowercase();
            let named: std::collections::HashSet<String> = members
                .iter()
                .map(|m| m.trim().to_ascii_lowercase())
                .filter(|m| *m != me_name)
                .collect();
            if named.len() + 1 > max {
                return Err(too_many());
            }
            // Each name looked up once, in the order given.
            let mut seen = std::collections::HashSet::new();
            let mut ids = vec![me_id];
            for member in &members {
                if !seen.insert(member.trim().to_ascii_lowercase()) {
                    continue;
                }
                let u = active_user(&app, member).await?;
                if !ids.contains(&u.id) {
                    ids.push(u.id);
                }
            }
            if ids.len() > max {
                return Err(too_many());
            }
            let chat = app
                .db
                .call(move |s| s.create_group(&new_id, &name, me_id, &ids, now))
                .await?;
            push_chat(
                &app,
                &chat,
                &format!("group-created by={}", user.user.username),
            );
            Ok((StatusCode::CREATED, Json(chat_info(&chat, me_id))).into_response())
        }
    }
}

/// `GET /api/chats/{id}`.
pub async fn chat(
    State(app): State<App>,
    user: AuthUser,
    Segments(id): Segments<String>,
) -> Result<Json<ChatInfo>, ApiError> {
    let chat = member_chat(&app, &user, id).await?;
    Ok(Json(chat_info(&chat, user.user.id)))
}

fn require_owner(chat: &ChatRow, user: &AuthUser) -> Result<(), ApiError> {
    if chat.kind != crate::protocol::ChatKind::Group {
        return Err(ApiError::bad_request(
            "not_a_group",
            "Only groups have members to change.",
        ));
    }
    let owner = chat
        .members
        .iter()
        .any(|m| m.user_id == user.user.id && m.role == "owner");
    if !owner {
        return Err(ApiError::forbidden(
            "not_owner",
            "Only the group's owner can do that.",
        ));
    }
    Ok(())
}

/// `PATCH /api/chats/{id}`: renames a group (owner only).
pub async fn rename_chat(
    State(app): State<App>,
    user: AuthUser,
    Segments(id): Segments<String>,
    Body(req): Body<RenameChatRequest>,
) -> Result<Json<ChatInfo>, ApiError> {
    let chat = member_chat(&app, &user, id.clone()).await?;
    require_owner(&chat, &user)?;
    let name = group_name(&req.name)?;
    let chat = app
        .db
        .call(move |s| {
            s.rename_chat(&id, &name)?;
            s.chat(&id)?.ok_or(StoreError::NotFound)
        })
        .await?;
    push_chat(
        &app,
        &chat,
        &format!("group-renamed by={}", user.user.username),
    );
    Ok(Json(chat_info(&chat, user.user.id)))
}

/// `POST /api/chats/{id}/members`: adds a member to a group (owner only).
pub async fn add_member(
    State(app): State<App>,
    user: AuthUser,
    Segments(id): Segments<String>,
    Body(req): Body<AddMemberRequest>,
) -> Result<Json<ChatInfo>, ApiError> {
    let chat = member_chat(&app, &user, id.clone()).await?;
    require_owner(&chat, &user)?;
    if chat.members.len() >= app.config.limits.max_group_members {
        return Err(ApiError::bad_request(
            "too_many_members",
            format!(
                "A group has at most {} members.",
                app.config.limits.max_group_members
            ),
        ));
    }
    let new = active_user(&app, &req.username).await?;
    let now = app.clock.now_ms();
    let chat = match app.db.call(move |s| s.add_member(&id, new.id, now)).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::conflict(
                "already_member",
                "They are already a member.",
            ));
        }
        other => other?,
    };
    push_chat(
        &app,
        &chat,
        &format!(
            "member-joined user={} by={}",
            req.username.trim().to_ascii_lowercase(),
            user.user.username
        ),
    );
    Ok(Json(chat_info(&chat, user.user.id)))
}

/// `DELETE /api/chats/{id}/members/{name}`: the owner removes a member, or a
/// member leaves (names themselves).
pub async fn remove_member(
    State(app): State<App>,
    user: AuthUser,
    Segments((id, name)): Segments<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let chat = member_chat(&app, &user, id.clone()).await?;
    let name = name.to_ascii_lowercase();
    let leaving = name == user.user.username;
    if leaving {
        if chat.kind != crate::protocol::ChatKind::Group {
            return Err(ApiError::bad_request(
                "not_a_group",
                "You cannot leave a direct chat.",
            ));
        }
    } else {
        require_owner(&chat, &user)?;
    }
    let target = chat
        .members
        .iter()
        .find(|m| m.username == name)
        .map(|m| m.user_id)
        .ok_or_else(|| ApiError::not_found("They are not a member of this chat."))?;
    let after = app.db.call(move |s| s.remove_member(&id, target)).await?;
    app.hub.send_to_users(
        [target],
        &encode(&ServerFrame::ChatRemoved {
            chat: chat.id.clone(),
        }),
        None,
    );
    if let Some(after) = after {
        push_chat(
            &app,
            &after,
            &format!("member-left user={name} by={}", user.user.username),
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /api/chats/{id}/messages`.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    /// Messages with sequence numbers below this (newest first page if absent).
    before: Option<u64>,
    /// Messages with sequence numbers above this; excludes `before`.
    after: Option<u64>,
    /// Page size, at most the server's maximum.
    limit: Option<usize>,
}

/// `GET /api/chats/{id}/messages`: a page of history, oldest first.
pub async fn history(
    State(app): State<App>,
    user: AuthUser,
    Segments(id): Segments<String>,
    Params(q): Params<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let chat = member_chat(&app, &user, id).await?;
    let max = app.config.limits.history_page_max;
    let limit = q.limit.unwrap_or(50).clamp(1, max);
    if q.before.is_some() && q.after.is_some() {
        return Err(ApiError::bad_request(
            "bad_request",
            "Give either before or after, not both.",
        ));
    }
    let chat_id = chat.id.clone();
    let (mut rows, forward) = match q.after {
        Some(after) => (
            app.db
                .call(move |s| s.messages_after(&chat_id, after, limit + 1))
                .await?,
            true,
        ),
        None => {
            let before = q.before.unwrap_or(u64::MAX);
            (
                app.db
                    .call(move |s| s.messages_before(&chat_id, before, limit + 1))
                    .await?,
                false,
            )
        }
    };
    let more = rows.len() > limit;
    if more {
        if forward {
            rows.truncate(limit);
        } else {
            rows.remove(0);
        }
    }
    Ok(Json(HistoryPage {
        messages: rows
            .into_iter()
            .map(|row| message_record(row, &user.user.username))
            .collect(),
        more,
    }))
}

/// `GET /api/admin/registration`.
pub async fn get_registration(
    State(app): State<App>,
    _admin: AdminUser,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mode = app.registration_mode().await?;
    Ok(Json(serde_json::json!({ "mode": mode })))
}

/// Body of `PUT /api/admin/registration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationBody {
    mode: RegistrationMode,
}

/// `PUT /api/admin/registration`.
pub async fn set_registration(
    State(app): State<App>,
    admin: AdminUser,
    Body(body): Body<RegistrationBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mode = body.mode;
    app.db
        .call(move |s| s.set_setting("registration_mode", mode.as_str().as_bytes()))
        .await?;
    app.audit(
        "registration_mode",
        &admin.0.user.username,
        mode.as_str().to_owned(),
    )
    .await;
    Ok(Json(serde_json::json!({ "mode": mode })))
}

/// Body of `POST /api/admin/invites`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    #[serde(default = "one")]
    uses: u32,
    #[serde(default = "week")]
    expires_in_secs: u64,
}

fn one() -> u32 {
    1
}

fn week() -> u64 {
    7 * 24 * 3600
}

/// `POST /api/admin/invites`: a new invite code, shown once.
pub async fn create_invite(
    State(app): State<App>,
    admin: AdminUser,
    Body(body): Body<InviteBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if body.uses == 0
        || body.uses > 1000
        || body.expires_in_secs == 0
        || body.expires_in_secs > 365 * 24 * 3600
    {
        return Err(ApiError::bad_request(
            "bad_request",
            "uses must be 1–1000 and expires_in_secs 1 second to 1 year.",
        ));
    }
    let code = B64::encode(&auth::random_bytes::<16>());
    let hash = auth::invite_hash(&code);
    let now = app.clock.now_ms();
    let expires_at = now + ms(std::time::Duration::from_secs(body.expires_in_secs));
    let (by, uses) = (admin.0.user.id, body.uses);
    app.db
        .call(move |s| s.create_invite(&hash, by, now, expires_at, uses))
        .await?;
    app.audit(
        "invite_created",
        &admin.0.user.username,
        format!("uses={uses} expires_at={expires_at}"),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "code": code, "uses": uses, "expires_at": expires_at })),
    ))
}

/// Body of `PATCH /api/admin/users/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminUserBody {
    disabled: Option<bool>,
    is_admin: Option<bool>,
}

/// The account `name` (canonicalised) that an administrator acts on: not
/// their own, and existing.
async fn other_user(app: &App, admin: &AdminUser, name: &str) -> Result<UserRow, ApiError> {
    let name = name.to_ascii_lowercase();
    if name == admin.0.user.username {
        return Err(ApiError::bad_request(
            "self",
            "Administrators cannot change their own account here.",
        ));
    }
    app.db
        .call(move |s| s.user_by_name(&name))
        .await?
        .ok_or_else(|| ApiError::not_found("No such user."))
}

/// `PATCH /api/admin/users/{name}`: disable, enable, promote or demote.
/// Disabling ends the user's sessions. An admin cannot change themselves.
pub async fn admin_update_user(
    State(app): State<App>,
    admin: AdminUser,
    Segments(name): Segments<String>,
    Body(body): Body<AdminUserBody>,
) -> Result<Json<UserEntry>, ApiError> {
    let target = other_user(&app, &admin, &name).await?;
    let name = target.username.clone();
    let disabled = body.disabled.unwrap_or(target.disabled);
    let is_admin = body.is_admin.unwrap_or(target.is_admin);
    let id = target.id;
    let (row, ended) = app
        .db
        .call(move |s| {
            s.set_user_flags(id, is_admin, disabled)?;
            let ended = if disabled {
                s.delete_user_sessions(id)?
            } else {
                Vec::new()
            };
            Ok((s.user_by_id(id)?, ended))
        })
        .await?;
    app.hub.close_sessions(&ended, close::SESSION_ENDED);
    app.audit(
        "admin_user_update",
        &admin.0.user.username,
        format!("user={name} disabled={disabled} is_admin={is_admin}"),
    )
    .await;
    let online: BTreeSet<String> = app.hub.online().into_iter().collect();
    Ok(Json(user_entry(row, &online)))
}

/// `GET /api/admin/sessions`: every session (who, since when, last use, from
/// where). The id is the hex SHA-256 the store keeps, not the token.
pub async fn admin_sessions(
    State(app): State<App>,
    admin: AdminUser,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let current = admin.0.session;
    let rows = app.db.call(|s| s.all_sessions()).await?;
    Ok(Json(
        rows.into_iter()
            .map(|x| {
                serde_json::json!({
                    "id": hex(&x.hash), "username": x.username, "created_at": x.created_at,
                    "last_seen": x.last_seen, "ip": x.ip, "current": x.hash == current,
                })
            })
            .collect(),
    ))
}

/// `DELETE /api/admin/sessions/{id}`: ends a session and closes its sockets.
pub async fn admin_end_session(
    State(app): State<App>,
    admin: AdminUser,
    Segments(id): Segments<String>,
) -> Result<StatusCode, ApiError> {
    let hash = unhex(&id).ok_or_else(|| ApiError::not_found("No such session."))?;
    let rows = app.db.call(|s| s.all_sessions()).await?;
    let Some(user) = rows
        .into_iter()
        .find(|r| r.hash == hash)
        .map(|r| r.username)
    else {
        return Err(ApiError::not_found("No such session."));
    };
    app.db.call(move |s| s.delete_session(&hash)).await?;
    app.hub.close_sessions(&[hash], close::SESSION_ENDED);
    app.audit(
        "admin_session_ended",
        &admin.0.user.username,
        format!("user={user}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `POST /api/admin/users/{name}/reset`: starts an account reset (as
/// `securechat user reset` does) and answers the one-time code, shown once.
/// An administrator cannot reset their own account here.
pub async fn admin_reset_user(
    State(app): State<App>,
    admin: AdminUser,
    Segments(name): Segments<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let target = other_user(&app, &admin, &name).await?;
    let name = target.username.clone();
    let (code, hash, expires) = auth::reset_code(app.clock.now_ms());
    let id = target.id;
    let unusable = tokio::task::spawn_blocking(auth::unusable_hash)
        .await
        .map_err(ApiError::internal)?;
    let ended = app
        .db
        .call(move |s| s.start_reset(id, &hash, expires, &unusable))
        .await?;
    app.hub.close_sessions(&ended, close::SESSION_ENDED);
    app.audit("user_reset", &admin.0.user.username, format!("user={name}"))
        .await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "code": code, "expires_at": expires })),
    ))
}

/// `GET /api/admin/audit`: the newest 500 security events.
pub async fn audit_log(
    State(app): State<App>,
    _admin: AdminUser,
) -> Result<Json<Vec<crate::store::AuditRow>>, ApiError> {
    Ok(Json(app.db.call(|s| s.audit_log(500)).await?))
}

/// Any other `/api/` path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("No such API endpoint.")
}

/// A known `/api/` path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "That endpoint does not take this method.",
    )
}
