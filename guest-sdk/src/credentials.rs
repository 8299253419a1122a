//! Which request fields carry credentials by their name. Shared by policies that must not
//! share an answer given to a caller who identified itself, and by the host, which hides
//! such fields from shadow records.

/// Words whose presence in a field name marks a credential: `X-Api-Key`, `X-Auth-Token`,
/// `X-Amz-Security-Token`, `Ocp-Apim-Subscription-Key`, `X-Hub-Signature`, `X-Session-Id`...
const WORDS: [&str; 8] = [
    "auth",
    "token",
    "key",
    "secret",
    "session",
    "password",
    "signature",
    "credential",
];

/// Whether a request field (its name, lower-cased) carries a credential by the usual
/// naming; `Authorization` does.
pub fn names_a_credential(name: &str) -> bool {
    WORDS.iter().any(|word| name.contains(word))
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
        ] {
            assert!(names_a_credential(name), "{name}");
        }
        for name in ["accept", "user-agent", "x-request-id", "cache-control"] {
            assert!(!names_a_credential(name), "{name}");
        }
    }
}
