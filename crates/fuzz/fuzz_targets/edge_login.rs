//! The edge's login-frame parser on arbitrary frame bodies: it must return, and an accepted login
//! must never show its token in `Debug` output.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(login) = wire::login::parse(data) {
        let shown = format!("{login:?}");
        if login.token.len() >= 8 {
            assert!(!shown.contains(login.token.as_str()), "token in Debug output");
        }
        assert_eq!(wire::InteropAccount::parse(&login.account.to_string()), Ok(login.account));
    }
});
