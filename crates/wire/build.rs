//! Turns the token dictionary (data/wa-dictionary-v3.json) into static tables and an
//! open-addressing lookup table, so neither parsing nor hashing happens at run time.

use std::fmt::Write as _;
use std::path::PathBuf;

include!("src/dict_hash.rs");

/// log2 of the lookup table size: 4096 slots for ~1260 tokens keeps probe chains short.
const TABLE_BITS: u32 = 12;

#[derive(Clone, Copy, Default)]
struct Slot {
    head: u64,
    tail: u64,
    len: u16,
    code: u16,
}

fn main() {
    let src = "data/wa-dictionary-v3.json";
    println!("cargo::rerun-if-changed={src}");
    println!("cargo::rerun-if-changed=src/dict_hash.rs");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).expect("read dictionary")).expect("dictionary is JSON");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().expect("array").iter().map(|s| s.as_str().expect("string").to_owned()).collect()
    };
    let single = strings(&json["single_byte"]);
    let double: Vec<Vec<String>> = json["double_byte"].as_array().expect("array").iter().map(strings).collect();
    assert_eq!(single.len(), 236, "single-byte dictionary size");
    assert_eq!(single[0], "", "index 0 is the empty string");
    assert_eq!(double.len(), 4, "four double-byte dictionaries");
    assert!(double.iter().all(|d| d.len() == 256), "256 entries per double-byte dictionary");

    // Codes: 1..=235 single-byte token; 256 + dict * 256 + index for double-byte tokens; 0 = empty slot.
    let mut entries: Vec<(&str, u16)> =
        single.iter().enumerate().skip(1).map(|(i, s)| (s.as_str(), i as u16)).collect();
    for (d, dict) in double.iter().enumerate() {
        for (i, s) in dict.iter().enumerate() {
            entries.push((s.as_str(), 256 + (d as u16) * 256 + i as u16));
        }
    }
    let size = 1usize << TABLE_BITS;
    let mut table = vec![Slot::default(); size];
    let mut max_len = 0;
    let mut max_probe = 0;
    let mut seen = std::collections::HashSet::new();
    for &(s, code) in &entries {
        // A token listed twice keeps its first (shortest) code, as reference encoders do.
        if s.is_empty() || !seen.insert(s) {
            continue;
        }
        max_len = max_len.max(s.len());
        let (head, tail) = token_words(s.as_bytes());
        let mut slot = (token_hash(head, tail, s.len()) >> (64 - TABLE_BITS)) as usize;
        let mut probe = 0;
        while table[slot].len != 0 {
            slot = (slot + 1) & (size - 1);
            probe += 1;
        }
        max_probe = max_probe.max(probe);
        table[slot] = Slot { head, tail, len: s.len() as u16, code };
    }
    assert!(max_probe < 32, "lookup table probe chain too long: {max_probe}");

    let mut out = String::new();
    let quote = |s: &str| format!("{s:?}");
    writeln!(
        out,
        "pub(crate) static V3_SINGLE: [&str; 236] = [{}];",
        single.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
    )
    .unwrap();
    writeln!(out, "pub(crate) static V3_DOUBLE: [[&str; 256]; 4] = [").unwrap();
    for dict in &double {
        writeln!(out, "    [{}],", dict.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")).unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(out, "pub(crate) static V3_LOOKUP: [TokenSlot; {size}] = [").unwrap();
    for t in &table {
        writeln!(
            out,
            "    TokenSlot {{ head: {:#x}, tail: {:#x}, len: {}, code: {} }},",
            t.head, t.tail, t.len, t.code
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();
    writeln!(out, "pub(crate) const V3_LOOKUP_BITS: u32 = {TABLE_BITS};").unwrap();
    writeln!(out, "pub(crate) const V3_MAX_TOKEN_LEN: usize = {max_len};").unwrap();
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("dictionary_v3.rs");
    std::fs::write(dest, out).expect("write generated dictionary");
}
