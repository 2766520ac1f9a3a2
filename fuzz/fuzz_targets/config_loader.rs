//! Drives the configuration loader (`herald_server::config::from_text`:
//! TOML text + environment variables over the defaults, as `herald serve`
//! loads them) with arbitrary input. The input is split at NUL bytes: the
//! first piece is the TOML document (skipped unless UTF-8, as a file read
//! would fail first), each further piece an environment variable
//! `NAME=VALUE` (bytes as they are, not necessarily Unicode), with `HERALD_`
//! put in front of the name unless the piece starts with `!`. The loader
//! must give options or an error, never panic; options it gives, written
//! back as TOML (when TOML can hold them), load to the same options.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::Path;

use herald_server::config::{self, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pieces = data.split(|byte| *byte == 0);
    let text = pieces
        .next()
        .and_then(|text| std::str::from_utf8(text).ok());
    let env: Vec<(OsString, OsString)> = pieces.map(variable).collect();
    let file = text.map(|text| (Path::new("fuzz.toml"), text));
    let Ok(options) = config::from_text(file, &env, &Overrides::default()) else {
        return;
    };
    // TOML has no unsigned 64-bit integers: a value above i64::MAX set from
    // the environment has no TOML form, and that is fine.
    let Ok(written) = toml::to_string(&options) else {
        return;
    };
    match config::from_toml_str(Path::new("written.toml"), &written) {
        Ok(back) => assert_eq!(back, options, "written back as:\n{written}"),
        Err(error) => panic!("options written back as TOML are refused: {error}\n{written}"),
    }
});

fn variable(piece: &[u8]) -> (OsString, OsString) {
    let (name, value) = match piece.iter().position(|byte| *byte == b'=') {
        Some(at) => (&piece[..at], &piece[at + 1..]),
        None => (piece, &[][..]),
    };
    let name = match name.strip_prefix(b"!") {
        Some(raw) => raw.to_vec(),
        None => [b"HERALD_".as_slice(), name].concat(),
    };
    (OsString::from_vec(name), OsString::from_vec(value.to_vec()))
}
