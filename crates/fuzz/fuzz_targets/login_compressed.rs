//! The edge's login parser on login frames whose bodies repeat: the input is run-length pairs
//! (byte, count), expanded (up to 64 KiB, a login frame's limit), and tried both as it is (an
//! attribute- or node-heavy frame) and deflated (a compression bomb, which must be refused on its
//! flags byte). run.sh runs this target with a small `-malloc_limit_mb`, so one allocation past
//! the login budget is a crash.
#![no_main]

use std::io::Write as _;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = wire::login::LOGIN_FRAME_MAX;
    let mut frame = Vec::with_capacity(max);
    frame.push(0);
    for pair in data.chunks_exact(2) {
        let n = usize::from(pair[1]) * 64 + 1;
        if frame.len() + n > max {
            break;
        }
        frame.resize(frame.len() + n, pair[0]);
    }
    if let Ok(login) = wire::login::parse(&frame) {
        assert_eq!(wire::InteropAccount::parse(&login.account.to_string()), Ok(login.account));
    }
    let mut z = flate2::write::ZlibEncoder::new(vec![wire::payload::FLAG_ZLIB], flate2::Compression::fast());
    if z.write_all(&frame[1..]).is_ok()
        && let Ok(zipped) = z.finish()
    {
        assert!(matches!(wire::login::parse(&zipped), Err(wire::login::LoginError::Compressed)));
    }
});
