//! The frame cipher on a 256-byte stanza: sealing with the key expanded, and sealing right after
//! the key was parked (an idle relay parks it; the next frame pays for expanding it again).
//!
//! Run: `cargo bench -p wire --bench cipher` (figures in docs/performance.md).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use wire::testing::transports;

fn seal(c: &mut Criterion) {
    let (proxy, _chatd) = transports();
    let (mut send, _recv) = proxy.split();
    let mut buf = BytesMut::with_capacity(256 + 16);
    let mut g = c.benchmark_group("seal 256 B");
    g.bench_function("key expanded", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(&[7u8; 256]);
            send.seal(black_box(&mut buf)).unwrap();
        })
    });
    g.bench_function("key parked before each frame", |b| {
        b.iter(|| {
            send.park();
            buf.clear();
            buf.extend_from_slice(&[7u8; 256]);
            send.seal(black_box(&mut buf)).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, seal);
criterion_main!(benches);
