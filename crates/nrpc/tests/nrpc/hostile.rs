//! Hostile frames, generated: whatever bytes arrive, the server's reading of a frame
//! neither panics nor allocates beyond the limit, and sizes, nesting and metadata are
//! judged as documented. The same logic is the `nrpc_frame` fuzz target's.

use bytes::Bytes;
use islb_nrpc::frame::{self, ENVELOPE_SLACK, Inbound};
use islb_nrpc::{Code, Metadata, fuzz_logic};
use proptest::prelude::*;

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map("[a-z0-9-]{1,20}", prop::collection::vec(".{0,40}", 0..4), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        fuzz_logic::request_frame(&data);
    }

    #[test]
    fn valid_frames_cut_short_or_flipped_never_panic(md in metadata(), nid in ".{0,30}", cut in 0usize..512, flip in any::<(usize, u8)>()) {
        let mut bytes = frame::call("nrpc.islb-1.islb.ISLB.FindNode", &md, &nid).to_vec();
        fuzz_logic::request_frame(&bytes);
        let i = flip.0 % bytes.len();
        bytes[i] ^= flip.1;
        fuzz_logic::request_frame(&bytes);
        bytes.truncate(cut.min(bytes.len()));
        fuzz_logic::request_frame(&bytes);
    }

    #[test]
    fn metadata_of_any_shape_reads_back_as_sent(md in metadata(), nid in ".{0,30}") {
        let read = frame::read_request(frame::call("m", &md, &nid), 1 << 20);
        let Inbound::Call(call) = read else { panic!("{read:?}") };
        prop_assert_eq!(frame::from_proto(call.metadata.as_ref()), md);
        prop_assert_eq!(call.nid, nid);
    }

    #[test]
    fn frames_past_the_limit_are_refused_unread_and_named_as_calls(extra in 1usize..4096, is_call in any::<bool>()) {
        let max = 1024;
        let mut bytes = vec![0u8; max + ENVELOPE_SLACK + extra];
        bytes[0] = if is_call { 0x12 } else { 0x1a };
        match frame::read_request(Bytes::from(bytes), max) {
            Inbound::Oversized { status, call } => {
                prop_assert_eq!(status.code, Code::ResourceExhausted);
                prop_assert_eq!(call, is_call);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn deep_nesting_is_malformed_not_a_stack_overflow() {
    // 100,000 nested groups (start-group tags of field 15) inside a `data` field, and as
    // unknown fields at the top: prost bounds recursion, the frame is refused.
    let groups = [0x7bu8].repeat(100_000);
    for bytes in [groups.clone(), [vec![0x1a, 0x80, 0x80, 0x06], groups].concat()] {
        match frame::read_request(Bytes::from(bytes.clone()), 1 << 20) {
            Inbound::Malformed(status) => assert_eq!(status.code, Code::InvalidArgument),
            other => panic!("{other:?}"),
        }
        fuzz_logic::request_frame(&bytes);
    }
}

#[test]
fn a_length_claiming_more_than_the_frame_holds_is_malformed() {
    // A `call` whose length says 2^62 bytes: no allocation of that size, an error.
    let bytes = [0x12, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0x0a];
    assert!(matches!(frame::read_request(Bytes::copy_from_slice(&bytes), 1024), Inbound::Malformed(_)));
}
