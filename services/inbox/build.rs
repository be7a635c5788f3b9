fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    // Only the dead-letter console's package: the inbox serves it and stays
    // independent of the services' contracts.
    build_support::compile_protos_where(&proto_root, "admin_descriptor.bin", |file| file.starts_with("pulse/admin"))
}
