//! The built-in known-answer tests pass.

#[test]
fn self_test_passes() {
    assert_eq!(paycrypto::self_test(), Ok(()));
}
