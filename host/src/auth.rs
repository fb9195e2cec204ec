//! Who may do what: JWTs (HS256, signed with the server's secret) and the
//! permission check of spec §4.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::store::Permissions;

/// The claims of a realm token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub user: String,
    pub realm: String,
    pub permissions: Vec<String>,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    /// Managing the realm itself (`_permissions`): only `realm-owner`.
    RealmOwner,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::Write => "write",
            Need::RealmOwner => "realm-owner",
        }
    }

    /// `realm-owner` implies read and write, as in Boxel.
    fn granted_by(self, p: Permissions) -> bool {
        p.realm_owner
            || match self {
                Need::Read => p.read,
                Need::Write => p.write,
                Need::RealmOwner => false,
            }
    }
}

/// Why a request was refused: 401, 403, or 503 when the permissions could
/// not be read (a storage failure never turns into a 403).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the permissions could not be read: {0}")]
    Unavailable(String),
}

/// Parses `read,write,realm-owner` (comma separated) into permissions.
pub fn parse_permissions<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Permissions, String> {
    let mut p = Permissions::default();
    for name in names {
        match name.trim() {
            "read" => p.read = true,
            GUEST_ADMIN => {}
            "write" => p.write = true,
            "realm-owner" => p.realm_owner = true,
            "" => {}
            other => return Err(format!("unknown permission '{other}' (use read, write or realm-owner)")),
        }
    }
    Ok(p)
}

/// Signs a token for `user` with these claims, valid for `ttl_secs`.
fn sign(secret: &str, user: &str, realm: String, permissions: Vec<String>, ttl_secs: u64) -> Result<String, String> {
    let now = crate::store::now_unix().max(0) as u64;
    let claims = Claims { user: user.into(), realm, permissions, exp: now + ttl_secs, iat: now };
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).map_err(|e| e.to_string())
}

pub fn issue(secret: &str, user: &str, realm: &str, permissions: Permissions, ttl_secs: u64) -> Result<String, String> {
    let mut names = Vec::new();
    if permissions.read {
        names.push("read".to_string());
    }
    if permissions.write {
        names.push("write".to_string());
    }
    if permissions.realm_owner {
        names.push("realm-owner".to_string());
    }
    sign(secret, user, realm.to_string(), names, ttl_secs)
}

/// The permission that lets a token deploy and switch guests.
pub const GUEST_ADMIN: &str = "guest-admin";

/// Issues a server-wide admin token (not tied to a realm).
pub fn issue_admin(secret: &str, user: &str, ttl_secs: u64) -> Result<String, String> {
    sign(secret, user, String::new(), vec![GUEST_ADMIN.into()], ttl_secs)
}

fn verify(secret: &str, authorization: Option<&str>) -> Result<Claims, Denied> {
    let header = authorization.ok_or_else(|| Denied::Unauthenticated("Missing Authorization header".into()))?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let token = header
        .trim_start()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .ok_or_else(|| Denied::Unauthenticated("Authorization header must be `Bearer <token>`".into()))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_nbf = true;
    validation.leeway = 0;
    decode::<Claims>(token.trim(), &DecodingKey::from_secret(secret.as_bytes()), &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Denied::Unauthenticated("Token expired".into()),
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => Denied::Unauthenticated("Token not valid yet (nbf)".into()),
            _ => Denied::Unauthenticated("Token invalid".into()),
        })
}

/// Admits a guest admin (a valid token carrying `guest-admin`); answers the user.
pub fn authorize_admin(secret: &str, authorization: Option<&str>) -> Result<String, Denied> {
    let claims = verify(secret, authorization)?;
    if claims.permissions.iter().any(|p| p == GUEST_ADMIN) {
        Ok(claims.user)
    } else {
        Err(Denied::Forbidden(format!("{} may not deploy guests: the token lacks '{GUEST_ADMIN}'", claims.user)))
    }
}

/// The refusal of a write to `user` (`None`: anyone) in `realm`, as
/// [`authorize`] words it.
pub fn write_refused(user: Option<&str>, realm: &str) -> Denied {
    match user {
        Some(user) => Denied::Forbidden(format!("Insufficient permissions to perform this action: {user} needs 'write' in {realm}")),
        None => Denied::Unauthenticated("Missing Authorization header".into()),
    }
}

/// Decides whether a request may proceed. `public` is what `*` may do;
/// `user_grants` looks up a named user's permissions in the realm. Answers
/// whose grant let it in: `None` for anyone's, else the token's user.
pub async fn authorize<F, Fut>(
    secret: &str,
    realm: &str,
    need: Need,
    public: Permissions,
    authorization: Option<&str>,
    user_grants: F,
) -> Result<Option<String>, Denied>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Permissions, Denied>>,
{
    if need.granted_by(public) {
        return Ok(None);
    }
    let claims = verify(secret, authorization)?;
    let token_realm = crate::realm::url::canonical_realm_url(&claims.realm).unwrap_or_default();
    if token_realm != realm {
        return Err(Denied::Forbidden(format!("this token is for realm {}, not {realm}", claims.realm)));
    }
    let in_token = parse_permissions(claims.permissions.iter().map(String::as_str))
        .map_err(|_| Denied::Unauthenticated("Token invalid".into()))?;
    let granted = user_grants(claims.user.clone()).await?.union(public);
    if need.granted_by(in_token) && need.granted_by(granted) {
        Ok(Some(claims.user))
    } else {
        Err(Denied::Forbidden(format!(
            "Insufficient permissions to perform this action: {} needs '{}' in {realm}",
            claims.user,
            need.name()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret";
    const REALM: &str = "http://h/r/";

    fn rw() -> Permissions {
        Permissions { read: true, write: true, realm_owner: false }
    }

    async fn check(need: Need, public: Permissions, header: Option<String>, grants: Permissions) -> Result<(), Denied> {
        authorize(SECRET, REALM, need, public, header.as_deref(), |_| async move { Ok(grants) }).await.map(|_| ())
    }

    #[tokio::test]
    async fn public_realms_need_no_token() {
        assert_eq!(check(Need::Write, rw(), None, Permissions::default()).await, Ok(()));
        let anyone = authorize(SECRET, REALM, Need::Write, rw(), None, |_| async { Ok(Permissions::default()) }).await;
        assert_eq!(anyone, Ok(None), "let in by anyone's grant");
        let good = issue(SECRET, "alice", REALM, rw(), 60).unwrap();
        let header = format!("Bearer {good}");
        let alice = authorize(SECRET, REALM, Need::Write, Permissions::default(), Some(&header), |_| async { Ok(rw()) }).await;
        assert_eq!(alice, Ok(Some("alice".to_string())), "let in by the token's user's grant");
    }

    #[tokio::test]
    async fn tokens_are_checked() {
        let none = Permissions::default();
        assert!(matches!(check(Need::Read, none, None, rw()).await, Err(Denied::Unauthenticated(_))));
        assert!(matches!(check(Need::Read, none, Some("Bearer junk".into()), rw()).await, Err(Denied::Unauthenticated(_))));
        let good = issue(SECRET, "alice", REALM, rw(), 60).unwrap();
        assert_eq!(check(Need::Write, none, Some(format!("Bearer {good}")), rw()).await, Ok(()));
        let other_realm = issue(SECRET, "alice", "http://h/other/", rw(), 60).unwrap();
        assert!(matches!(check(Need::Read, none, Some(format!("Bearer {other_realm}")), rw()).await, Err(Denied::Forbidden(_))));
        let read_only = issue(SECRET, "alice", REALM, Permissions { read: true, ..none }, 60).unwrap();
        assert!(matches!(check(Need::Write, none, Some(format!("Bearer {read_only}")), rw()).await, Err(Denied::Forbidden(_))));
        let not_granted = issue(SECRET, "mallory", REALM, rw(), 60).unwrap();
        assert!(matches!(check(Need::Read, none, Some(format!("Bearer {not_granted}")), none).await, Err(Denied::Forbidden(_))));
        let lower_case_scheme = check(Need::Write, none, Some(format!("bearer {good}")), rw()).await;
        assert_eq!(lower_case_scheme, Ok(()));
        let owner = Permissions { realm_owner: true, ..none };
        let owner_token = issue(SECRET, "carol", REALM, owner, 60).unwrap();
        assert_eq!(check(Need::Write, none, Some(format!("Bearer {owner_token}")), owner).await, Ok(()), "realm-owner may write");
        assert_eq!(check(Need::Read, none, Some(format!("Bearer {owner_token}")), owner).await, Ok(()), "realm-owner may read");
        let unreadable = authorize(SECRET, REALM, Need::Read, none, Some(&format!("Bearer {good}")), |_| async move {
            Err(Denied::Unavailable("pool timed out".into()))
        })
        .await
        .map(|_| ());
        assert!(matches!(unreadable, Err(Denied::Unavailable(_))), "a storage failure is not a 403: {unreadable:?}");
        let owner_only = check(Need::RealmOwner, rw(), Some(format!("Bearer {good}")), rw()).await;
        assert!(matches!(owner_only, Err(Denied::Forbidden(_))), "write is not realm-owner: {owner_only:?}");
        assert!(matches!(check(Need::RealmOwner, rw(), None, rw()).await, Err(Denied::Unauthenticated(_))), "a public realm still needs a token");
        assert_eq!(check(Need::RealmOwner, none, Some(format!("Bearer {owner_token}")), owner).await, Ok(()));
        let wrong_secret = issue("other", "alice", REALM, rw(), 60).unwrap();
        assert!(matches!(check(Need::Read, none, Some(format!("Bearer {wrong_secret}")), rw()).await, Err(Denied::Unauthenticated(_))));
    }
}
