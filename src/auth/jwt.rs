//! JWT verification: HS256, RS256 and ES256, with keys from the
//! configuration or a JWKS file; `exp` (required), `nbf`, `iss` and `aud`
//! checked.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{AuthConfigError, AuthError, Identity};
use crate::config::JwtConfig;

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    es256: Option<DecodingKey>,
    jwks: Option<JwkSet>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: u64,
    user_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("es256", &self.es256.is_some())
            .field("jwks", &self.jwks.as_ref().map(|k| k.keys.len()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtVerifier {
    pub fn from_config(config: &JwtConfig) -> Result<JwtVerifier, AuthConfigError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| AuthConfigError(format!("cannot read {}: {e}", path.display())))
        };
        let rs256 = match &config.rs256_public_key_file {
            Some(path) => Some(
                DecodingKey::from_rsa_pem(&read(path)?)
                    .map_err(|e| AuthConfigError(format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        let es256 = match &config.es256_public_key_file {
            Some(path) => Some(
                DecodingKey::from_ec_pem(&read(path)?)
                    .map_err(|e| AuthConfigError(format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        let jwks = match &config.jwks_file {
            Some(path) => Some(
                serde_json::from_slice::<JwkSet>(&read(path)?)
                    .map_err(|e| AuthConfigError(format!("{}: {e}", path.display())))?,
            ),
            None => None,
        };
        let hs256 = config
            .hs256_secret
            .as_deref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        if hs256.is_none() && rs256.is_none() && es256.is_none() && jwks.is_none() {
            return Err(AuthConfigError(
                "auth.jwt needs hs256_secret, rs256_public_key_file, es256_public_key_file or jwks_file".into(),
            ));
        }
        Ok(JwtVerifier {
            hs256,
            rs256,
            es256,
            jwks,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_seconds,
            user_claim: config
                .user_claim
                .clone()
                .unwrap_or_else(|| "sub".to_owned()),
        })
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch) and
    /// returns who it names.
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let invalid = |e: &dyn std::fmt::Display| AuthError::InvalidToken(e.to_string());
        let header = decode_header(token).map_err(|e| invalid(&e))?;
        let from_jwks = || -> Option<DecodingKey> {
            let jwks = self.jwks.as_ref()?;
            let jwk = match &header.kid {
                Some(kid) => jwks.find(kid)?,
                None if jwks.keys.len() == 1 => jwks.keys.first()?,
                None => return None,
            };
            DecodingKey::from_jwk(jwk).ok()
        };
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone(),
            Algorithm::RS256 => self.rs256.clone().or_else(from_jwks),
            Algorithm::ES256 => self.es256.clone().or_else(from_jwks),
            other => {
                return Err(AuthError::InvalidToken(format!(
                    "algorithm {other:?} is not accepted"
                )))
            }
        }
        .ok_or_else(|| AuthError::InvalidToken(format!("no key for {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        // `exp` and `nbf` are checked below against `now`, integers or not
        // (a float `exp` must not switch expiry off).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        if self.audience.is_empty() {
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp"]);
        } else {
            validation.set_audience(&self.audience);
            // Configured means required: a token without `aud` is refused.
            validation.set_required_spec_claims(&["exp", "aud"]);
        }
        let data =
            decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => invalid(&e),
            })?;
        let claims = data.claims;
        let exp = time_claim(&claims, "exp")?
            .ok_or_else(|| AuthError::InvalidToken("claim 'exp' is missing".into()))?;
        if exp.saturating_add(self.leeway) <= now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = time_claim(&claims, "nbf")? {
            if nbf > now.saturating_add(self.leeway) {
                return Err(AuthError::InvalidToken("token not yet valid (nbf)".into()));
            }
        }
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => {
                return Err(AuthError::InvalidToken(format!(
                    "claim '{}' naming the user is missing",
                    self.user_claim
                )))
            }
        };
        Ok(Identity {
            user,
            claims,
            sub_is_user: false,
            expires_at: Some(exp),
            permissions: None,
        })
    }
}

/// A NumericDate claim as whole seconds: integers, and floats rounded down
/// (`1700000000.9` expires at `1700000000`); absurd values saturate rather
/// than overflow. `None` when absent; refused when not a finite number.
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let bad = || AuthError::InvalidToken(format!("claim '{name}' is not a number of seconds"));
    if let Some(n) = value.as_u64() {
        return Ok(Some(n));
    }
    match value.as_f64() {
        Some(f) if f.is_finite() => Ok(Some(if f <= 0.0 { 0 } else { f.floor() as u64 })),
        _ => Err(bad()),
    }
}
