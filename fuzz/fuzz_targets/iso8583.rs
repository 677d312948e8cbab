//! The acquirer link's ISO 8583 messages as an acquirer host could send them: arbitrary bytes
//! decoded as one message, and the same bytes as a stream cut by the deframer (in two pushes,
//! the first byte choosing where to split), each frame decoded too. Must never panic; whatever
//! decodes must re-encode to exactly the bytes it came from, and a message with a MAC must
//! split into the MAC input and the MAC field at the end.
#![no_main]

use acqlink::{Deframer, MacProtected, Message};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    let Ok(message) = Message::decode(bytes) else {
        return;
    };
    assert_eq!(message.encode(), bytes, "re-encoding changed the message");
    if message.mac().is_some() {
        let protected = MacProtected::decode(bytes).expect("decoded once");
        let input = protected.mac_input();
        assert_eq!(input.len() + 16, bytes.len());
        assert_eq!(message.encode_for_mac().mac_input(), input);
        assert_eq!(protected.into_verified(), message);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let (first, second) = stream.split_at((usize::from(split) * 8).min(stream.len()));
    let mut deframer = Deframer::new();
    for part in [first, second] {
        deframer.push(part);
        while let Ok(Some(frame)) = deframer.pop() {
            assert!(!frame.is_empty() && frame.len() <= acqlink::MAX_MESSAGE);
            check(&frame);
            let framed = acqlink::frame(&frame).expect("a deframed message frames again");
            assert_eq!(framed.get(2..), Some(&frame[..]));
        }
    }
});
