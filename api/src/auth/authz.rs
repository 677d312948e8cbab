//! Who may do what where: the one `authorize` every backoffice handler calls.
//!
//! Two questions, in this order. Can the caller see the object at all (is it inside the
//! caller's subtree)? If not the answer is 404/`4040`, the same as for an object that does not
//! exist, so ids cannot be probed across tenants. Does the caller's role allow the action? If
//! not, 403/`4030`.

use crate::domain::model::{Role, Tenancy};
use crate::error::ApiError;

/// Where a caller's authority reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The whole platform.
    Platform,
    /// A reseller and everything below it.
    Reseller(String),
    /// One merchant.
    Merchant(String),
}

/// An authenticated backoffice caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's subject.
    pub sub: String,
    /// The effective role.
    pub role: Role,
    /// Where it reaches.
    pub scope: Scope,
    /// The platform user record, when there is one.
    pub user_id: Option<String>,
    /// E-mail from the user record or the token.
    pub email: Option<String>,
    /// Every platform role named in the token.
    pub roles: Vec<String>,
    /// When the token expires (Unix seconds).
    pub token_exp: i64,
}

/// What a handler is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read objects.
    Read,
    /// Day-to-day work: claim devices, charge, refund, cancel.
    Operate,
    /// Change a merchant's settings, users, devices, API clients, overrides, settlements.
    ManageMerchant,
    /// Manage a reseller subtree: resellers, fee templates, branding, domains, merchants.
    ManageReseller,
    /// Platform-wide changes (top-level resellers).
    ManagePlatform,
}

impl Action {
    const fn least_role(self) -> Role {
        match self {
            Self::Read | Self::Operate => Role::MerchantUser,
            Self::ManageMerchant => Role::MerchantAdmin,
            Self::ManageReseller => Role::ResellerAdmin,
            Self::ManagePlatform => Role::PlatformAdmin,
        }
    }
}

impl Principal {
    /// Whether an object with this tenancy lies inside the caller's subtree.
    pub fn sees(&self, tenancy: &Tenancy) -> bool {
        match &self.scope {
            Scope::Platform => true,
            Scope::Reseller(r) => tenancy.resellers.iter().any(|x| x == r),
            Scope::Merchant(m) => tenancy.merchant.as_deref() == Some(m.as_str()),
        }
    }

    /// The merchant the caller is bound to, if it is a merchant-level caller.
    pub fn merchant(&self) -> Option<&str> {
        match &self.scope {
            Scope::Merchant(m) => Some(m),
            _ => None,
        }
    }
}

/// The one authorisation check: 404 outside the subtree, then 403 below the action's role.
pub fn authorize(p: &Principal, action: Action, tenancy: &Tenancy) -> Result<(), ApiError> {
    if !p.sees(tenancy) {
        return Err(ApiError::not_found());
    }
    allow(p, action)
}

/// The role check alone, for platform-wide lists whose contents are filtered by scope.
pub fn allow(p: &Principal, action: Action) -> Result<(), ApiError> {
    if p.role >= action.least_role() {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn who(role: Role, scope: Scope) -> Principal {
        Principal {
            sub: "s".into(),
            role,
            scope,
            user_id: None,
            email: None,
            roles: vec![],
            token_exp: 0,
        }
    }

    #[test]
    fn subtree_then_role() {
        let merchant = Tenancy {
            resellers: vec!["r1".into(), "r2".into()],
            merchant: Some("m".into()),
        };
        let code = |p: &Principal, a| authorize(p, a, &merchant).err().map(|e| e.code());
        let top = who(Role::ResellerAdmin, Scope::Reseller("r1".into()));
        let sub = who(Role::ResellerAdmin, Scope::Reseller("r2".into()));
        let other = who(Role::ResellerAdmin, Scope::Reseller("r3".into()));
        let user = who(Role::MerchantUser, Scope::Merchant("m".into()));
        let admin = who(Role::MerchantAdmin, Scope::Merchant("m".into()));
        let stranger = who(Role::MerchantAdmin, Scope::Merchant("x".into()));
        assert_eq!(code(&top, Action::ManageReseller), None);
        assert_eq!(code(&sub, Action::ManageMerchant), None);
        assert_eq!(code(&other, Action::Read), Some(Code::NotFound));
        assert_eq!(code(&stranger, Action::Read), Some(Code::NotFound));
        assert_eq!(code(&user, Action::Operate), None);
        assert_eq!(code(&user, Action::ManageMerchant), Some(Code::Forbidden));
        assert_eq!(code(&admin, Action::ManageMerchant), None);
        assert_eq!(code(&admin, Action::ManageReseller), Some(Code::Forbidden));
        let platform = who(Role::PlatformAdmin, Scope::Platform);
        assert_eq!(code(&platform, Action::ManagePlatform), None);
        assert_eq!(code(&top, Action::ManagePlatform), Some(Code::Forbidden));
    }
}
