//! The chatd simulator's connection intro (PROXY v1/v2 header, `ED` pre-intro, `WA` header) on
//! arbitrary bytes: it must return an error or a parsed intro, never panic, never read past its
//! bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

thread_local! {
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().build().expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    RT.with(|rt| {
        let mut input = data;
        let _ = rt.block_on(chatd_sim::chat::intro::read_intro(&mut input));
    });
});
