//! Which request fields carry credentials by their name. Shared by policies that must not
//! share an answer given to a caller who identified itself, and by the host, which hides
//! such fields from shadow records.

/// Words whose presence in a field name marks a credential or an identity: `X-Api-Key`,
/// `X-Auth-Token`, `X-Amz-Security-Token`, `Ocp-Apim-Subscription-Key`, `X-Hub-Signature`,
/// `X-Session-Id`, `X-Ms-Client-Principal`, `Cf-Access-Jwt-Assertion`, `X-Client-Cert`,
/// `Cookie2`, `X-Forwarded-Email`...
const WORDS: [&str; 15] = [
    "auth",
    "token",
    "key",
    "secret",
    "session",
    "password",
    "signature",
    "credential",
    "principal",
    "jwt",
    "assertion",
    "cert",
    "cookie",
    "email",
    "identity",
];

/// Whether a request field carries a credential or says who the caller is, by the usual
/// naming, in any letter case; `Authorization` does. Names of a user (`X-Remote-User`,
/// `X-Forwarded-User`, `X-User-Id`, `X-Forwarded-Preferred-Username`) count; `User-Agent`
/// does not.
pub fn names_a_credential(name: &str) -> bool {
    // CGI-style servers read `X_User_Id` or `X.User.Id` as `X-User-Id` (RFC 3875 §4.1.18);
    // field names are case-insensitive, and a name as written (`X-Api-Key`) is one too.
    let name: String = name
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '-',
        })
        .collect();
    WORDS.iter().any(|word| name.contains(word)) || names_a_user(&name)
}

fn names_a_user(name: &str) -> bool {
    name.ends_with("user")
        || name.ends_with("username")
        || name.contains("userid")
        || name.contains("user-id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_fields_are_known_by_their_names() {
        for name in [
            "authorization",
            "x-api-key",
            "x-auth-token",
            "x-amz-security-token",
            "ocp-apim-subscription-key",
            "x-hub-signature",
            "x-session-id",
            "x-client-credential",
            "x-forwarded-user",
            "x-remote-user",
            "x-user",
            "x-user-id",
            "x_user_id",
            "x.user.id",
            "x-forwarded-preferred-username",
            "x-ms-client-principal",
            "cf-access-jwt-assertion",
            "x-client-cert",
            "cookie2",
            "x-forwarded-email",
            // As written, not lower-cased first.
            "Authorization",
            "X-Api-Key",
            "X_User_Id",
        ] {
            assert!(names_a_credential(name), "{name}");
        }
        for name in [
            "accept",
            "user-agent",
            "x-request-id",
            "cache-control",
            "accept-language",
            "x-forwarded-for",
            "User-Agent",
        ] {
            assert!(!names_a_credential(name), "{name}");
        }
    }
}
