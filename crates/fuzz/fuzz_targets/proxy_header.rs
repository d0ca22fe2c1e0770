//! PROXY v1/v2 header parsing on arbitrary bytes: the shared sans-IO parser (used by the edge and
//! the simulator) and the simulator's whole connection intro (PROXY header, `ED` pre-intro, `WA`
//! header). An error or a result, never a panic; a parsed header never claims more bytes than it
//! was given or than the bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

thread_local! {
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(wire::proxy_header::Parsed::Header { len, .. }) = wire::proxy_header::parse(data) {
        assert!(len <= data.len() && len <= wire::proxy_header::MAX_LEN);
    }
    RT.with(|rt| {
        let mut input = data;
        let _ = rt.block_on(chatd_sim::chat::intro::read_intro(&mut input));
    });
});
