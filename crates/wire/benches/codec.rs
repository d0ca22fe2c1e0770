//! Decode and encode of a realistic stanza mix, ours beside `wacore-binary` on the same bytes.
//!
//! The mix is what a chat connection carries most: 1:1 messages with `pkmsg`/`msg` payloads, a
//! group fan-out, delivery and read receipts, acks, keepalive pings and their results, and
//! notifications. Before timing, the bench checks that both codecs decode every stanza and that
//! `wacore-binary` re-encodes each one to exactly our bytes, so both sides work on the same input.
//!
//! Run: `cargo bench -p wire --bench codec` (figures in docs/performance.md).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::decode::Decoder;
use wire::encode::Encoder;
use wire::{Jid, Node, Server};

/// Deterministic filler for ciphertext-like payloads.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn wa(user: &str) -> Jid {
    Jid::new(user, Server::Whatsapp)
}

fn mix() -> Vec<Node> {
    let partner = Jid::interop(1, "10853634039893", 0);
    let phone = wa("4915112345678");
    let group = Jid::new("120363025246125486", Server::Group);
    let server = Jid::server(Server::Whatsapp);
    let msg_id = "3EB0C431F9A2B7D5E1F0";
    vec![
        // 1:1 first message: a prekey message and the sender's device identity.
        Node::new("message")
            .attr("to", phone.clone())
            .attr("id", msg_id)
            .attr("type", "text")
            .attr("t", "1732612345")
            .children(vec![
                Node::new("enc").attr("v", "2").attr("type", "pkmsg").bytes(noise(420, 1)),
                Node::new("device-identity").bytes(noise(156, 2)),
            ]),
        // Incoming 1:1 message from an interop user.
        Node::new("message")
            .attr("from", partner.clone())
            .attr("id", "3EB0D7A1C2E4F6081A2B")
            .attr("type", "text")
            .attr("t", "1732612350")
            .attr("notify", "Joe")
            .children(vec![Node::new("enc").attr("v", "2").attr("type", "msg").bytes(noise(180, 3))]),
        // Group fan-out to four devices.
        Node::new("message")
            .attr("to", group.clone())
            .attr("id", "3EB0AA01BB02CC03DD04")
            .attr("type", "text")
            .attr("phash", "2:AbCdEf12")
            .children(vec![
                Node::new("participants").children(
                    (0..4)
                        .map(|d| {
                            Node::new("to")
                                .attr("jid", Jid::with_device("4915112345678", Server::Whatsapp, d + 1))
                                .children(vec![
                                    Node::new("enc")
                                        .attr("v", "2")
                                        .attr("type", "msg")
                                        .bytes(noise(128, 10 + u64::from(d))),
                                ])
                        })
                        .collect(),
                ),
                Node::new("enc").attr("v", "2").attr("type", "skmsg").bytes(noise(200, 20)),
            ]),
        // Delivery receipt, read receipt with a list, acks.
        Node::new("receipt").attr("to", phone.clone()).attr("id", msg_id).attr("t", "1732612351"),
        Node::new("receipt")
            .attr("from", partner.clone())
            .attr("id", msg_id)
            .attr("type", "read")
            .attr("t", "1732612360")
            .children(vec![
                Node::new("list").children(
                    ["3EB0C431F9A2B7D5E1F1", "3EB0C431F9A2B7D5E1F2"]
                        .iter()
                        .map(|i| Node::new("item").attr("id", *i))
                        .collect(),
                ),
            ]),
        Node::new("ack")
            .attr("class", "message")
            .attr("id", msg_id)
            .attr("from", phone.clone())
            .attr("t", "1732612352"),
        Node::new("ack").attr("class", "receipt").attr("id", msg_id).attr("to", partner.clone()).attr("type", "read"),
        // Keepalive and its result.
        Node::new("iq").attr("id", "52713.41071-3").attr("xmlns", "w:p").attr("type", "get").attr("to", server.clone()),
        Node::new("iq").attr("from", server.clone()).attr("id", "52713.41071-3").attr("type", "result"),
        // Notifications.
        Node::new("notification")
            .attr("from", phone.clone())
            .attr("type", "encrypt")
            .attr("id", "2451228097")
            .attr("t", "1732612370")
            .children(vec![Node::new("identity")]),
        Node::new("notification")
            .attr("from", server)
            .attr("type", "encrypt")
            .attr("id", "2451228098")
            .attr("t", "1732612371")
            .children(vec![Node::new("count").attr("value", "9")]),
    ]
}

fn codec(c: &mut Criterion) {
    let nodes = mix();
    let encoder = Encoder::default();
    let payloads: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| {
            let mut out = Vec::new();
            encoder.encode_payload(n, &mut out).expect("mix encodes");
            out
        })
        .collect();
    let total: usize = payloads.iter().map(Vec::len).sum();
    eprintln!("stanza mix: {} stanzas, {total} bytes", payloads.len());

    // Same input for both: wacore decodes our bytes, and its encoder reproduces them exactly.
    let theirs: Vec<wacore_binary::Node> = payloads
        .iter()
        .map(|p| {
            let body = wacore_binary::util::unpack(p).expect("wacore unpacks");
            wacore_binary::marshal::unmarshal_ref(&body).expect("wacore decodes our bytes").to_owned()
        })
        .collect();
    let mut decoder = Decoder::default();
    for ((their, ours), node) in theirs.iter().zip(&payloads).zip(&nodes) {
        let their_bytes = wacore_binary::marshal::marshal(their).expect("wacore encodes");
        // wacore-binary writes INTEROP_JID without the trailing server (WA Web's shape); ours
        // writes it. Everything else is byte for byte the same.
        if !ours.windows(9).any(|w| w == b"\xfc\x07interop") {
            assert_eq!(&their_bytes, ours, "same bytes");
        }
        assert_eq!(&decoder.decode_payload(&their_bytes).expect("we decode theirs").to_owned(), node);
    }
    for (p, n) in payloads.iter().zip(&nodes) {
        assert_eq!(&decoder.decode_payload(p).expect("we decode").to_owned(), n);
    }

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("ours", |b| {
        let mut decoder = Decoder::default();
        b.iter(|| {
            for p in &payloads {
                let node = decoder.decode_payload(black_box(p)).expect("decodes");
                black_box(node.tag());
            }
        })
    });
    g.bench_function("wacore-binary", |b| {
        b.iter(|| {
            for p in &payloads {
                let body = wacore_binary::util::unpack(black_box(p)).expect("unpacks");
                let node = wacore_binary::marshal::unmarshal_ref(&body).expect("decodes");
                black_box(&node);
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("ours", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            for n in &nodes {
                out.clear();
                encoder.encode_payload(black_box(n), &mut out).expect("encodes");
                black_box(&out);
            }
        })
    });
    g.bench_function("wacore-binary", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            for n in &theirs {
                out.clear();
                wacore_binary::marshal::marshal_to_vec(black_box(n), &mut out).expect("encodes");
                black_box(&out);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
