//! The checked-in code in `src/gen/` is what prost generates from `proto/`: this test
//! regenerates it (with protox, no system protoc) and fails on any difference.
//! `ISLB_BLESS=1 cargo test -p islb-proto --test generated` rewrites it.

use std::path::Path;

const FILES: &[&str] = &[
    "nrpc/nrpc.proto",
    "google/rpc/status.proto",
    "proto/ion/ion.proto",
    "proto/islb/islb.proto",
    "proto/islb/admin.proto",
    "grpc/reflection/v1alpha/reflection.proto",
    "grpc/reflection/v1/reflection.proto",
];

#[test]
fn generated_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(FILES, [root.join("proto")]).expect("the .proto files compile");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_path_buf();
    prost_build::Config::new().out_dir(&out).compile_fds(fds.clone()).expect("prost generates code");
    let mut descriptors = Vec::new();
    prost::Message::encode(&fds, &mut descriptors).unwrap();
    std::fs::write(out.join("descriptors.bin"), &descriptors).unwrap();

    let gen_dir = root.join("src/gen");
    let bless = std::env::var_os("ISLB_BLESS").is_some();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        let fresh = std::fs::read(&path).unwrap();
        let current = std::fs::read(gen_dir.join(name)).unwrap_or_default();
        if fresh != current {
            if bless {
                std::fs::write(gen_dir.join(name), &fresh).unwrap();
            } else {
                stale.push(name.to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "src/gen is stale ({stale:?}): run ISLB_BLESS=1 cargo test -p islb-proto --test generated"
    );
}
