//! Buyer identity (HS256 JWT, `sub` = user id) and the admin credential for setup operations.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints a token for a user (the load-test CLI and tests use it; a real deployment's identity
/// provider would).
pub fn mint_token(
    secret: &str,
    user_id: i64,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint_token_at(secret, user_id, ttl, 0)
}

/// Like [`mint_token`], issued `offset_secs` from now (negative: in the past, for expiry tests).
pub fn mint_token_at(
    secret: &str,
    user_id: i64,
    ttl: Duration,
    offset_secs: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let iat = now_secs().saturating_add_signed(offset_secs);
    let claims = Claims {
        sub: user_id.to_string(),
        iat,
        exp: iat + ttl.as_secs(),
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Verifies signature and expiry and returns the user id.
pub fn verify_token(secret: &str, token: &str) -> Result<i64, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
        _ => AuthError::Invalid,
    })?;
    data.claims.sub.parse().map_err(|_| AuthError::Invalid)
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

/// Compares the admin credential in constant time with respect to its content.
pub fn is_admin(expected: &str, presented: &str) -> bool {
    let (a, b) = (expected.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_to_its_user() {
        let token = mint_token("s3cret", 42, Duration::from_secs(60)).unwrap();
        assert_eq!(verify_token("s3cret", &token), Ok(42));
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_rejected() {
        let token = mint_token("other", 42, Duration::from_secs(60)).unwrap();
        assert_eq!(verify_token("s3cret", &token), Err(AuthError::Invalid));
        let iat = now_secs() - 3600;
        let claims = Claims {
            sub: "1".into(),
            iat,
            exp: iat + 60,
        };
        let expired = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(verify_token("s3cret", &expired), Err(AuthError::Expired));
        assert_eq!(verify_token("s3cret", "not.a.jwt"), Err(AuthError::Invalid));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Invalid));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::Missing));
        assert!(is_admin("tok", "tok"));
        assert!(!is_admin("tok", "tok2"));
    }
}
