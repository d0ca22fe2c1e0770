//! `stanza`: translate WhatsApp binary stanzas to and from XML or JSON.
//!
//! Reads standard input, writes standard output. A bad input ends with exit status 1 and a
//! one-line error on standard error.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use error_report::Report;
use wire::decode::Decoder;
use wire::dict::Dictionary;
use wire::encode::{EncodeOptions, Encoder};
use wire::text::{XmlStyle, from_json, from_xml, to_json, to_xml};

#[derive(Parser)]
#[command(name = "stanza", version, about = "WhatsApp binary stanza <-> XML/JSON translation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// XML or JSON on stdin -> binary stanza payload on stdout.
    Encode {
        #[arg(long, value_enum)]
        from: TextForm,
        #[arg(long, value_enum)]
        to: BinaryForm,
        /// zlib-compress the node (flags byte 0x02).
        #[arg(long)]
        zlib: bool,
        /// Write the bare node, without the leading flags byte.
        #[arg(long, conflicts_with = "zlib")]
        bare: bool,
    },
    /// Binary stanza payload on stdin -> XML or JSON on stdout.
    Decode {
        #[arg(long, value_enum)]
        from: BinaryForm,
        #[arg(long, value_enum)]
        to: TextForm,
        /// One line instead of indented output.
        #[arg(long)]
        compact: bool,
        /// The input is a bare node, without the leading flags byte.
        #[arg(long)]
        bare: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TextForm {
    Xml,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum BinaryForm {
    /// Hexadecimal text; whitespace is ignored.
    Hex,
    /// Raw bytes.
    Bin,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stanza: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    let mut input = Vec::new();
    io::stdin().read_to_end(&mut input).map_err(|e| format!("reading stdin: {}", Report(&e)))?;
    let output = match command {
        Command::Encode { from, to, zlib, bare } => {
            let text = std::str::from_utf8(&input).map_err(|_| "input is not UTF-8 text".to_owned())?;
            let node = match from {
                TextForm::Xml => from_xml(text),
                TextForm::Json => from_json(text),
            }
            .map_err(|e| format!("parse: {}", Report(&e)))?;
            let encoder = Encoder::new(&Dictionary::V3, EncodeOptions { compress: zlib });
            let mut bytes = Vec::new();
            if bare { encoder.encode_node(&node, &mut bytes) } else { encoder.encode_payload(&node, &mut bytes) }
                .map_err(|e| format!("encode: {}", Report(&e)))?;
            match to {
                BinaryForm::Hex => format!("{}\n", hex::encode(bytes)).into_bytes(),
                BinaryForm::Bin => bytes,
            }
        }
        Command::Decode { from, to, compact, bare } => {
            let bytes = match from {
                BinaryForm::Bin => input,
                BinaryForm::Hex => {
                    let text: String = String::from_utf8_lossy(&input).split_whitespace().collect();
                    let text = text.strip_prefix("0x").unwrap_or(&text);
                    hex::decode(text).map_err(|e| format!("input is not hex: {}", Report(&e)))?
                }
            };
            let mut decoder = Decoder::default();
            let node = if bare { decoder.decode_node(&bytes) } else { decoder.decode_payload(&bytes) }
                .map_err(|e| format!("decode: {}", Report(&e)))?
                .to_owned();
            let mut text = match to {
                TextForm::Xml => to_xml(&node, if compact { XmlStyle::Compact } else { XmlStyle::Pretty }),
                TextForm::Json => to_json(&node, !compact),
            };
            text.push('\n');
            text.into_bytes()
        }
    };
    io::stdout().write_all(&output).map_err(|e| format!("writing stdout: {}", Report(&e)))
}
