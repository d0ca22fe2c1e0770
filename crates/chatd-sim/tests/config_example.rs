//! The documented example configuration parses and validates.

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/chatd-sim.toml");
    let config = chatd_sim::Config::from_file(path).unwrap();
    assert_eq!(config.integrators.len(), 1);
    assert_eq!(config.chat.listen.port(), 5222);
}

#[test]
fn bad_configs_say_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("chatd-sim-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, expect) in [
        ("[chat]\nmin_app_version = \"two\"\n", "chat.min_app_version"),
        ("[keys]\nroot_private_key = \"abcd\"\n", "keys.root_private_key"),
        ("[chat]\nlisten = \"nowhere\"\n", "parsing"),
        ("[chat]\nbogus = 1\n", "unknown field"),
        ("[[integrators]]\nid = 1\nbase_url = \"ftp://x\"\nissuer = \"x\"\n", "integrators.base_url"),
    ] {
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let err = chatd_sim::Config::from_file(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains(expect), "{text:?}: {err}");
        assert!(!err.contains("abcd"), "key material is not echoed: {err}");
    }
}
