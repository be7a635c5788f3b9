fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    // The admin package belongs to the inbox crate, which generates it itself.
    build_support::compile_protos_where(&proto_root, "pulse_descriptor.bin", |file| !file.starts_with("pulse/admin"))
}
