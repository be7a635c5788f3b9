fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a target
    // directory shared by checkouts at other paths reuses the compiled script.
    let proto_root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // Only the dead-letter console's package: the inbox serves it and stays
    // independent of the services' contracts.
    build_support::compile_protos_where(&proto_root, "admin_descriptor.bin", |file| file.starts_with("pulse/admin"))
}
