//! Authentication and authorization, without a broker.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::config::{JwtConfig, RuleConfig};

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn jwt_auth(rules: Vec<RuleConfig>) -> Arc<Auth> {
    Auth::from_config(&AuthConfig {
        anonymous: false,
        jwt: Some(JwtConfig {
            hs256_secret: Some(SECRET.into()),
            issuer: Some("shop".into()),
            audience: vec!["stompgate".into()],
            ..JwtConfig::default()
        }),
        users: vec![UserConfig {
            login: "ops".into(),
            passcode: "s3cret".into(),
        }],
        rules,
        user_exchange: "stompgate.user".into(),
        ..AuthConfig::default()
    })
    .expect("auth")
}

fn rule(verbs: &[&str], destination: &str) -> RuleConfig {
    RuleConfig {
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        destination: destination.into(),
        queue_arguments: Vec::new(),
    }
}

fn merchant_token(merchant: u64) -> String {
    token(
        json!({"sub": format!("m{merchant}"), "merchant_id": merchant, "iss": "shop", "aud": "stompgate", "exp": now() + 600}),
    )
}

#[test]
fn jwt_from_passcode_or_handshake() {
    let auth = jwt_auth(vec![]);
    let t = merchant_token(7);
    let id = auth
        .authenticate(None, Some(&t), None, now())
        .expect("passcode token");
    assert_eq!(id.user.as_deref(), Some("m7"));
    assert!(id.expires_at.is_some());
    let id = auth
        .authenticate(Some("m7"), None, Some(&t), now())
        .expect("handshake token");
    assert_eq!(id.user.as_deref(), Some("m7"));
}

#[test]
fn jwt_checks_exp_nbf_iss_aud_and_signature() {
    let auth = jwt_auth(vec![]);
    let expired = token(json!({"sub": "a", "iss": "shop", "aud": "stompgate", "exp": now() - 120}));
    assert_eq!(
        auth.authenticate(None, Some(&expired), None, now()),
        Err(AuthError::Expired)
    );
    let future = token(
        json!({"sub": "a", "iss": "shop", "aud": "stompgate", "exp": now() + 600, "nbf": now() + 300}),
    );
    assert!(matches!(
        auth.authenticate(None, Some(&future), None, now()),
        Err(AuthError::InvalidToken(_))
    ));
    let wrong_iss =
        token(json!({"sub": "a", "iss": "other", "aud": "stompgate", "exp": now() + 600}));
    assert!(matches!(
        auth.authenticate(None, Some(&wrong_iss), None, now()),
        Err(AuthError::InvalidToken(_))
    ));
    let wrong_aud = token(json!({"sub": "a", "iss": "shop", "aud": "else", "exp": now() + 600}));
    assert!(matches!(
        auth.authenticate(None, Some(&wrong_aud), None, now()),
        Err(AuthError::InvalidToken(_))
    ));
    let no_exp = token(json!({"sub": "a", "iss": "shop", "aud": "stompgate"}));
    assert!(matches!(
        auth.authenticate(None, Some(&no_exp), None, now()),
        Err(AuthError::InvalidToken(_))
    ));
    let forged = encode(
        &Header::default(),
        &json!({"sub": "a", "iss": "shop", "aud": "stompgate", "exp": now() + 600}),
        &EncodingKey::from_secret(b"another-secret"),
    )
    .expect("encode");
    assert!(matches!(
        auth.authenticate(None, Some(&forged), None, now()),
        Err(AuthError::InvalidToken(_))
    ));
}

#[test]
fn login_list_and_anonymous() {
    let auth = jwt_auth(vec![]);
    assert_eq!(
        auth.authenticate(Some("ops"), Some("s3cret"), None, now())
            .expect("login")
            .user
            .as_deref(),
        Some("ops")
    );
    assert_eq!(
        auth.authenticate(Some("ops"), Some("nope"), None, now()),
        Err(AuthError::BadLogin)
    );
    assert_eq!(
        auth.authenticate(None, None, None, now()),
        Err(AuthError::Required)
    );
    let open = Auth::open();
    assert_eq!(
        open.authenticate(None, None, None, now()),
        Ok(Identity::anonymous())
    );
}

#[test]
fn refresh_keeps_the_user() {
    let auth = jwt_auth(vec![]);
    let id = auth
        .authenticate(None, Some(&merchant_token(1)), None, now())
        .expect("id");
    assert!(auth.refresh(&id, &merchant_token(1), now()).is_ok());
    assert!(matches!(
        auth.refresh(&id, &merchant_token(2), now()),
        Err(AuthError::InvalidToken(_))
    ));
}

fn check(
    auth: &Auth,
    verb: Verb,
    dest: &str,
    id: &Identity,
    args: &[&str],
) -> Result<(), AuthError> {
    let parsed = Destination::parse(dest).unwrap_or(Destination::Topic { key: "user".into() });
    auth.authorize(verb, dest, &parsed, id, args)
}

#[test]
fn rules_use_claims_and_deny_by_default() {
    let mut with_args = rule(&["subscribe"], "/queue/merchant.{claims.merchant_id}.jobs");
    with_args.queue_arguments = vec!["x-max-length".into()];
    let auth = jwt_auth(vec![
        rule(
            &["subscribe"],
            "/topic/merchant.{claims.merchant_id}.orders",
        ),
        rule(&["subscribe", "send"], "/exchange/orders/{sub}.*"),
        rule(&["send"], "/user/*/queue/notifications"),
        with_args,
    ]);
    let a = auth
        .authenticate(None, Some(&merchant_token(1)), None, now())
        .expect("a");
    assert!(check(&auth, Verb::Subscribe, "/topic/merchant.1.orders", &a, &[]).is_ok());
    assert!(check(&auth, Verb::Subscribe, "/topic/merchant.2.orders", &a, &[]).is_err());
    assert!(check(&auth, Verb::Send, "/topic/merchant.1.orders", &a, &[]).is_err());
    assert!(check(&auth, Verb::Subscribe, "/topic/merchant.*.orders", &a, &[]).is_err());
    assert!(check(&auth, Verb::Send, "/exchange/orders/m1.new", &a, &[]).is_ok());
    assert!(check(&auth, Verb::Send, "/exchange/orders/m2.new", &a, &[]).is_err());
    assert!(check(&auth, Verb::Subscribe, "/topic/anything", &a, &[]).is_err());
    assert!(check(
        &auth,
        Verb::Subscribe,
        "/queue/merchant.1.jobs",
        &a,
        &["x-max-length"]
    )
    .is_ok());
    assert_eq!(
        check(
            &auth,
            Verb::Subscribe,
            "/queue/merchant.1.jobs",
            &a,
            &["x-message-ttl"]
        ),
        Err(AuthError::ArgumentForbidden("x-message-ttl".into()))
    );
    // Own user queue: always; another user's: by rule only.
    assert!(check(&auth, Verb::Subscribe, "/user/queue/notifications", &a, &[]).is_ok());
    assert!(check(&auth, Verb::Send, "/user/m2/queue/notifications", &a, &[]).is_ok());
    assert!(check(&auth, Verb::Send, "/user/m2/queue/other", &a, &[]).is_err());
}

#[test]
fn reserved_names_are_refused_even_without_rules() {
    let open = Auth::open();
    let id = Identity::anonymous();
    assert!(check(
        &open,
        Verb::Subscribe,
        "/exchange/amq.rabbitmq.trace/#",
        &id,
        &[]
    )
    .is_err());
    assert!(check(
        &open,
        Verb::Send,
        "/exchange/amq.rabbitmq.event/x",
        &id,
        &[]
    )
    .is_err());
    assert!(check(&open, Verb::Subscribe, "/queue/amq.direct-q", &id, &[]).is_err());
    assert!(check(&open, Verb::Subscribe, "/exchange/amq.topic/x", &id, &[]).is_ok());
    assert!(check(
        &open,
        Verb::Subscribe,
        "/queue/jobs",
        &id,
        &["x-max-length"]
    )
    .is_ok());
    // Anonymous sessions have no user queue; other users' queues need a rule.
    assert!(check(&open, Verb::Subscribe, "/user/queue/n", &id, &[]).is_err());
    assert!(check(&open, Verb::Send, "/user/bob/queue/n", &id, &[]).is_err());
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(FIXTURES).join(name)
}

fn signed(alg: jsonwebtoken::Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &json!({"sub": "k", "exp": now() + 600}), key).expect("encode")
}

fn with_jwt(jwt: JwtConfig) -> Arc<Auth> {
    Auth::from_config(&AuthConfig {
        jwt: Some(jwt),
        ..AuthConfig::default()
    })
    .expect("auth")
}

#[test]
fn rs256_and_es256_public_keys_from_pem_files() {
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("test-rs256-private.pem")).expect("read"))
            .expect("rsa key");
    let ec =
        EncodingKey::from_ec_pem(&std::fs::read(fixture("test-es256-private.pem")).expect("read"))
            .expect("ec key");
    let auth = with_jwt(JwtConfig {
        rs256_public_key_file: Some(fixture("test-rs256-public.pem")),
        es256_public_key_file: Some(fixture("test-es256-public.pem")),
        ..JwtConfig::default()
    });
    let rs = signed(jsonwebtoken::Algorithm::RS256, &rsa, None);
    let es = signed(jsonwebtoken::Algorithm::ES256, &ec, None);
    assert_eq!(
        auth.authenticate(None, Some(&rs), None, now())
            .expect("rs256")
            .user
            .as_deref(),
        Some("k")
    );
    assert_eq!(
        auth.authenticate(None, Some(&es), None, now())
            .expect("es256")
            .user
            .as_deref(),
        Some("k")
    );
    // An HS256 token is refused: no secret configured, whatever it claims.
    let hs = encode(
        &Header::default(),
        &json!({"sub": "k", "exp": now() + 600}),
        &EncodingKey::from_secret(b"x"),
    )
    .expect("encode");
    assert!(matches!(
        auth.authenticate(None, Some(&hs), None, now()),
        Err(AuthError::InvalidToken(_))
    ));
}

#[test]
fn keys_from_a_jwks_file_by_kid() {
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("test-rs256-private.pem")).expect("read"))
            .expect("rsa key");
    let ec =
        EncodingKey::from_ec_pem(&std::fs::read(fixture("test-es256-private.pem")).expect("read"))
            .expect("ec key");
    let mut rsa_jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa, jsonwebtoken::Algorithm::RS256)
            .expect("rsa jwk");
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&ec, jsonwebtoken::Algorithm::ES256)
        .expect("ec jwk");
    ec_jwk.common.key_id = Some("ec-1".into());
    let set = jsonwebtoken::jwk::JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    };
    let dir = std::env::temp_dir().join(format!("stompgate-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&set).expect("json")).expect("write");
    let auth = with_jwt(JwtConfig {
        jwks_file: Some(path),
        ..JwtConfig::default()
    });
    let rs = signed(jsonwebtoken::Algorithm::RS256, &rsa, Some("rsa-1"));
    let es = signed(jsonwebtoken::Algorithm::ES256, &ec, Some("ec-1"));
    assert!(auth.authenticate(None, Some(&rs), None, now()).is_ok());
    assert!(auth.authenticate(None, Some(&es), None, now()).is_ok());
    let unknown = signed(jsonwebtoken::Algorithm::RS256, &rsa, Some("nope"));
    assert!(matches!(
        auth.authenticate(None, Some(&unknown), None, now()),
        Err(AuthError::InvalidToken(_))
    ));
}
