//! Compiles the .proto files with protox (pure Rust), so building needs no
//! system `protoc`. Output goes to OUT_DIR only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/dbfleet/v1/dbfleet.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
