//! Arbitrary bytes as a keyd connection's input stream: frames are cut with the real decoder
//! and every request goes through the real dispatcher and service (software HSM, in-memory
//! store, a zone and a device with a key set), with every permission granted. Must never panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use keyd_proto::frame::{self, MAX_BODY};
use keyd_proto::message as m;
use libfuzzer_sys::fuzz_target;

fn service() -> &'static keyd::Service {
    static SERVICE: OnceLock<keyd::Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let hsm = keyd::SoftwareHsm::new();
        keyd::Hsm::create_lmk(&hsm).expect("lmk");
        let service = keyd::Service::new(Arc::new(hsm), Arc::new(keyd::MemoryStore::new()), keyd::Placement::Memory, 60, 64).expect("service").with_policy(keyd::officers::Policy::for_tests()).expect("policy");
        service.zmk_import(&m::ZmkImport { zone: "z1".into(), key: keyd_proto::Secret::new(&[7; 32]) }).expect("zmk");
        service.device_create(&m::DeviceCreate { device_id: "POS-00000001".into(), zone: "z1".into() }).expect("device");
        service.key_set_create(&m::KeySetCreate { device_id: "POS-00000001".into() }).expect("key set");
        service
    })
}

fuzz_target!(|data: &[u8]| {
    let service = service();
    let mut rest = data;
    while let Ok(Some((f, used))) = frame::decode(rest, MAX_BODY) {
        let _ = keyd::handle(service, u32::MAX, f.header.opcode, f.body);
        rest = &rest[used..];
    }
});
