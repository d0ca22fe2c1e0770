//! The `stanza` binary as a process: stdin in, stdout out, exit status and one-line errors.

use std::io::Write;
use std::process::{Command, Stdio};

const VECTOR: &str = include_str!("../../wire/tests/vectors/seed-message.json");

fn vector(field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
    v[field].as_str().unwrap().to_owned()
}

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

fn stanza(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stanza"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Run { code: out.status.code().unwrap(), stdout: out.stdout, stderr: String::from_utf8(out.stderr).unwrap() }
}

#[test]
fn seed_xml_encodes_to_the_canonical_hex() {
    let run = stanza(&["encode", "--from", "xml", "--to", "hex"], vector("xml").as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(String::from_utf8(run.stdout).unwrap().trim(), vector("canonical_hex"));
}

#[test]
fn seed_form_decodes_to_readable_xml_and_back() {
    let run = stanza(&["decode", "--from", "hex", "--to", "xml"], vector("seed_form_hex").as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let xml = String::from_utf8(run.stdout).unwrap();
    assert!(xml.contains(r#"id="123456""#) && xml.contains("<body>Body text of message.</body>"), "{xml}");
    let back = stanza(&["encode", "--from", "xml", "--to", "bin"], xml.as_bytes());
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert_eq!(hex::encode(back.stdout), vector("canonical_hex"));
}

#[test]
fn json_round_trip_through_binary_bytes() {
    let json = stanza(&["decode", "--from", "hex", "--to", "json"], vector("canonical_hex").as_bytes());
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["attrs"]["to"], "14155551001@s.whatsapp.net");
    let bin = stanza(&["encode", "--from", "json", "--to", "bin"], &json.stdout);
    assert_eq!(bin.code, 0, "{}", bin.stderr);
    assert_eq!(hex::encode(&bin.stdout), vector("canonical_hex"));
    let zlib = stanza(&["encode", "--from", "json", "--to", "bin", "--zlib"], &json.stdout);
    assert_eq!(zlib.stdout[0], 0x02);
    let again = stanza(&["decode", "--from", "bin", "--to", "json"], &zlib.stdout);
    assert_eq!(again.stdout, json.stdout);
}

#[test]
fn binary_content_shows_as_base64_and_encodes_back() {
    let xml = r#"<message to="1-42@interop" id="3EB0"><enc v="2" type="msg"><?base64 AAEC/w==?></enc></message>"#;
    let bin = stanza(&["encode", "--from", "xml", "--to", "hex"], xml.as_bytes());
    assert_eq!(bin.code, 0, "{}", bin.stderr);
    let back = stanza(&["decode", "--from", "hex", "--to", "xml", "--compact"], &bin.stdout);
    assert_eq!(String::from_utf8(back.stdout).unwrap().trim(), xml);
}

#[test]
fn bad_input_is_one_line_and_exit_status_1() {
    let printed = vector("seed_as_printed_hex_without_flags");
    for (args, input, expect) in [
        (vec!["decode", "--from", "hex", "--to", "xml", "--bare"], printed.as_bytes(), "7 bytes left over"),
        (vec!["decode", "--from", "hex", "--to", "xml"], b"zz".as_slice(), "not hex"),
        (vec!["decode", "--from", "bin", "--to", "json"], b"".as_slice(), "empty payload"),
        (vec!["encode", "--from", "xml", "--to", "hex"], b"<a><b></a>".as_slice(), "parse"),
        (vec!["encode", "--from", "json", "--to", "hex"], b"{\"tag\": 5}".as_slice(), "\"tag\" must be a string"),
    ] {
        let run = stanza(&args, input);
        assert_eq!(run.code, 1, "{args:?}");
        assert!(run.stdout.is_empty(), "{args:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("stanza: ") && run.stderr.contains(expect), "{args:?}: {}", run.stderr);
    }
}
