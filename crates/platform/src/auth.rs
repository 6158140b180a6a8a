//! Buyer identity (HS256 JWT, `sub` = user id) and the admin credential for setup operations.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// `iss` and `aud` of the tokens a deployment issues and accepts unless configured otherwise.
pub const DEFAULT_ISSUER: &str = "ordersys";
pub const DEFAULT_AUDIENCE: &str = "ordersys-orders";

/// The shortest JWT secret or admin token a service accepts outside development.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error(
        "token subject is not a buyer id (a positive decimal integer without sign or leading zero)"
    )]
    Subject,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The signing secret, issuer and audience of buyers' tokens (HS256): the services verify with
/// it; the load-test CLI and tests mint with it (a real deployment's identity provider would).
#[derive(Clone)]
pub struct TokenKeys {
    secret: Arc<str>,
    issuer: Arc<str>,
    audience: Arc<str>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    pub fn new(secret: &str, issuer: &str, audience: &str) -> Self {
        TokenKeys {
            secret: Arc::from(secret),
            issuer: Arc::from(issuer),
            audience: Arc::from(audience),
        }
    }

    /// Keys with the default issuer and audience.
    pub fn with_secret(secret: &str) -> Self {
        TokenKeys::new(secret, DEFAULT_ISSUER, DEFAULT_AUDIENCE)
    }

    /// A token for a user, valid for `ttl` from now.
    pub fn mint(&self, user_id: i64, ttl: Duration) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_at(user_id, ttl, 0)
    }

    /// Like [`TokenKeys::mint`], issued `offset_secs` from now (negative: in the past, for
    /// expiry tests).
    pub fn mint_at(
        &self,
        user_id: i64,
        ttl: Duration,
        offset_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(user_id.to_string(), ttl, offset_secs)
    }

    /// A token whose `sub` is any text, valid for `ttl`: for tests of identities a service
    /// must refuse (`+5`, `0`, …); real tokens come from [`TokenKeys::mint`].
    pub fn mint_subject(
        &self,
        subject: &str,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(subject.to_owned(), ttl, 0)
    }

    fn sign(
        &self,
        sub: String,
        ttl: Duration,
        offset_secs: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now_secs().saturating_add_signed(offset_secs);
        let claims = Claims {
            sub,
            iss: self.issuer.to_string(),
            aud: self.audience.to_string(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )
    }

    /// Checks algorithm (HS256 only), signature, expiry, issuer and audience; returns the user id.
    pub fn verify(&self, token: &str) -> Result<i64, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_issuer(&[&*self.issuer]);
        validation.set_audience(&[&*self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Claims>(
            token,
            &DecodingKey::from_secret(self.secret.as_bytes()),
            &validation,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        buyer_id(&data.claims.sub).ok_or(AuthError::Subject)
    }
}

/// The buyer id a token's `sub` names: only a canonical positive decimal integer that fits i64
/// (`^[1-9][0-9]*$`). Rust's `i64::from_str` alone would also take `+5`, `0`, `-1` and `05`:
/// ids no buyer has, or other spellings of one, which would pass as distinct identities
/// wherever the text is compared.
pub fn buyer_id(sub: &str) -> Option<i64> {
    let canonical = sub
        .as_bytes()
        .first()
        .is_some_and(|b| (b'1'..=b'9').contains(b))
        && sub.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return None;
    }
    // All digits, no sign: the only failure left is a number past i64::MAX.
    sub.parse().ok()
}

/// Why a secret must not guard a deployment: empty, shorter than [`MIN_SECRET_BYTES`], or one of
/// the built-in development values (they are in the repository, so anyone could use them).
pub fn weak_secret_reason(value: &str) -> Option<String> {
    if value.trim().is_empty() {
        Some("is empty".to_string())
    } else if [crate::dev::JWT_SECRET, crate::dev::ADMIN_TOKEN].contains(&value) {
        Some("is a built-in development value".to_string())
    } else if value.len() < MIN_SECRET_BYTES {
        Some(format!(
            "is {} bytes long, shorter than {MIN_SECRET_BYTES}",
            value.len()
        ))
    } else {
        None
    }
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Invalid)?
        .trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

/// Compares the admin credential in constant time with respect to its content (only a
/// difference in length shows in the timing).
pub fn is_admin(expected: &str, presented: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::with_secret(secret)
    }

    #[test]
    fn a_minted_token_verifies_to_its_user() {
        let token = keys("s3cret").mint(42, Duration::from_secs(60)).unwrap();
        assert_eq!(keys("s3cret").verify(&token), Ok(42));
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_rejected() {
        let token = keys("other").mint(42, Duration::from_secs(60)).unwrap();
        assert_eq!(keys("s3cret").verify(&token), Err(AuthError::Invalid));
        let expired = keys("s3cret")
            .mint_at(1, Duration::from_secs(60), -3600)
            .unwrap();
        assert_eq!(keys("s3cret").verify(&expired), Err(AuthError::Expired));
        assert_eq!(keys("s3cret").verify("not.a.jwt"), Err(AuthError::Invalid));
    }

    #[test]
    fn tokens_of_another_issuer_or_audience_or_without_them_are_rejected() {
        let ours = TokenKeys::new("s3cret", "shop", "orders");
        let ttl = Duration::from_secs(60);
        let other_issuer = TokenKeys::new("s3cret", "elsewhere", "orders")
            .mint(1, ttl)
            .unwrap();
        let other_audience = TokenKeys::new("s3cret", "shop", "admin")
            .mint(1, ttl)
            .unwrap();
        assert_eq!(ours.verify(&other_issuer), Err(AuthError::Invalid));
        assert_eq!(ours.verify(&other_audience), Err(AuthError::Invalid));
        assert_eq!(ours.verify(&ours.mint(1, ttl).unwrap()), Ok(1));

        #[derive(Serialize)]
        struct Bare {
            sub: String,
            exp: u64,
        }
        let bare = Bare {
            sub: "1".into(),
            exp: now_secs() + 60,
        };
        let bare = encode(
            &Header::new(Algorithm::HS256),
            &bare,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(ours.verify(&bare), Err(AuthError::Invalid));
        // Same claims, another algorithm: refused before the signature is looked at.
        let claims = Claims {
            sub: "1".into(),
            iss: "shop".into(),
            aud: "orders".into(),
            iat: now_secs(),
            exp: now_secs() + 60,
        };
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(ours.verify(&hs512), Err(AuthError::Invalid));
    }

    #[test]
    fn only_a_canonical_positive_id_is_a_buyer() {
        assert_eq!(buyer_id("5"), Some(5));
        assert_eq!(buyer_id("10"), Some(10));
        assert_eq!(buyer_id(&i64::MAX.to_string()), Some(i64::MAX));
        let past_i64 = (i64::MAX as u64 + 1).to_string();
        for sub in [
            "+5", "0", "-1", "05", " 5", "5 ", "1e3", "", "00", "-0", "5.0", "0x5", "٥", &past_i64,
        ] {
            assert_eq!(buyer_id(sub), None, "{sub:?}");
        }
    }

    #[test]
    fn a_token_for_a_subject_that_is_no_buyer_is_refused() {
        let keys = keys("s3cret");
        let ttl = Duration::from_secs(60);
        for sub in ["+5", "0", "-1", "05", "9223372036854775808"] {
            let token = keys.mint_subject(sub, ttl).unwrap();
            assert_eq!(keys.verify(&token), Err(AuthError::Subject), "{sub:?}");
        }
        assert_eq!(keys.verify(&keys.mint_subject("5", ttl).unwrap()), Ok(5));
    }

    #[test]
    fn weak_secrets_are_named() {
        assert!(weak_secret_reason("").unwrap().contains("empty"));
        assert!(weak_secret_reason(crate::dev::JWT_SECRET)
            .unwrap()
            .contains("development"));
        assert!(weak_secret_reason(crate::dev::ADMIN_TOKEN)
            .unwrap()
            .contains("development"));
        assert!(weak_secret_reason("short")
            .unwrap()
            .contains("shorter than 32"));
        assert_eq!(weak_secret_reason(&"k".repeat(32)), None);
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Invalid));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::Missing));
        assert!(is_admin("tok", "tok"));
        assert!(!is_admin("tok", "tok2"));
        assert!(!is_admin("tok", "tol"));
    }
}
