//! Join tokens (`keys::JoinToken`, text `ovljoin1.` + base64url), as `overlayctl join`
//! and the local API's `join` read them from an operator's paste.
//!
//! The first byte picks the form: the rest as text, or the rest as the token's bytes (put
//! behind the prefix in base64url, so the binary decoder is reached at every input).
//!
//! Checked: nothing panics; a token that parses prints back (`to_text`) as exactly the
//! text it was read from, minus surrounding whitespace (one encoding per token), and that
//! text parses to the same token.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use keys::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let text = if form & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        format!("ovljoin1.{}", BASE64URL.encode(rest))
    };
    let Ok(token) = text.parse::<JoinToken>() else {
        return;
    };
    let printed = token.to_text();
    assert_eq!(
        printed.as_str(),
        text.trim(),
        "a token has a second encoding"
    );
    let again: JoinToken = printed.parse().expect("a printed token parses");
    assert_eq!(again, token, "a token changed through its text");
    assert!(!token.endpoints().is_empty() && token.endpoints().len() <= keys::MAX_ENDPOINTS);
    let _ = token.check_expiry(overlay_fuzz::NOW);
});
