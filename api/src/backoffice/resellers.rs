//! Resellers: create, list, get, patch, delete, and the hierarchy with counts.

use super::*;

crate::body! {
    /// `POST /resellers`.
    #[derive(Debug)]
    pub struct ResellerCreate {
        /// Display name.
        pub name: Text<NAME_MAX>,
        /// The reseller to nest under (fixed for life).
        pub parent_id: Option<Id>,
    }
}

crate::body! {
    /// `PATCH /resellers/{id}`.
    #[derive(Debug)]
    pub struct ResellerPatch {
        /// Display name.
        pub name: Option<Text<NAME_MAX>>,
        /// Accepted only when it is the current parent: a reseller cannot be moved.
        pub parent_id: Nullable<Id>,
    }
}

/// `POST /resellers`.
pub async fn reseller_create(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let ResellerCreate { name, parent_id } = body::parse(&call.body)?;
    let parent_id = parent_id.map(String::from);
    let ancestors = match &parent_id {
        Some(parent) => {
            let parent = reseller(app, p, parent, Action::ManageReseller).await?;
            if parent.ancestors.len() >= MAX_DEPTH - 1 {
                return Err(ApiError::field(
                    "parent_id",
                    "resellers nest at most 32 levels deep",
                ));
            }
            parent.tenancy().resellers
        }
        None => {
            allow(p, Action::ManagePlatform)?;
            Vec::new()
        }
    };
    let record = Reseller {
        id: ids::uuid()?,
        name: name.into(),
        parent_id,
        ancestors,
        branding: None,
        portal_hosts: Vec::new(),
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(
            vec![db::absent::<Reseller>(&record.id), db::put(&record)?],
            conflict("reseller exists"),
        )
        .await?;
    Ok(record.to_json())
}

/// `GET /resellers`.
pub async fn reseller_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::Read)?;
    let (limit, after) = call.page()?;
    let page = match tree_scope(p)? {
        None => {
            app.db
                .page::<Reseller>("resellers", "", after, limit)
                .await?
        }
        Some(r) => {
            app.db
                .page::<Reseller>("reseller_tree", r, after, limit)
                .await?
        }
    };
    let items = page.items.iter().map(Reseller::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /resellers/{id}`.
pub async fn reseller_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(reseller(app, call.who()?, call.param(0), Action::Read)
        .await?
        .to_json())
}

/// `PATCH /resellers/{id}`.
pub async fn reseller_patch(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let current = reseller(app, p, call.param(0), Action::ManageReseller).await?;
    let ResellerPatch { name, .. } = body::parse_checked(&call.body, |b: &ResellerPatch, p| {
        let moved = match &b.parent_id {
            Nullable::Keep => false,
            Nullable::Clear => current.parent_id.is_some(),
            Nullable::Set(id) => current.parent_id.as_deref() != Some(&**id),
        };
        if moved {
            p.fail_member("parent_id", "a reseller cannot be moved");
        }
    })?;
    let name = name.map(String::from);
    let now = call.now;
    let updated = app
        .db
        .update::<Reseller>(&current.id, |r| {
            if let Some(n) = &name {
                r.name.clone_from(n);
            }
            r.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE /resellers/{id}`: refused while it has merchants or sub-resellers.
pub async fn reseller_delete(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let r = reseller(app, p, call.param(0), Action::ManageReseller).await?;
    if p.scope == Scope::Reseller(r.id.clone()) {
        return Err(ApiError::new(
            Code::Forbidden,
            "a reseller admin cannot delete its own reseller",
        ));
    }
    let children = app
        .db
        .page::<Reseller>("reseller_children", &r.id, None, 1)
        .await?;
    let merchants = app
        .db
        .page::<Merchant>("merchant_tree", &r.id, None, 1)
        .await?;
    if !children.items.is_empty() || !merchants.items.is_empty() {
        return Err(conflict(
            "the reseller still has merchants or sub-resellers",
        ));
    }
    let mut writes = vec![db::delete::<Reseller>(&r.id)];
    for host in &r.portal_hosts {
        writes.push(db::release("portal_host", host));
    }
    for t in app.db.all::<FeeTemplate>("fee_templates", &r.id).await? {
        writes.push(db::delete::<FeeTemplate>(&t.id));
    }
    for u in app.db.all::<User>("users", &r.id).await? {
        writes.push(db::release("user_sub", &u.idp_subject));
        writes.push(db::delete::<User>(&u.id));
        writes.push(db::delete::<Session>(&u.idp_subject));
    }
    app.db.commit(writes, conflict("reseller changed")).await?;
    Ok(deleted(&r.id, "reseller"))
}

crate::reply! {
    /// A merchant in a hierarchy.
    pub struct MerchantCount {
        /// UUID.
        pub id: String,
        /// Display name.
        pub name: String,
        /// Its devices.
        pub device_count: u64,
    }
}

crate::reply! {
    /// A reseller in a hierarchy, with its subtree.
    pub struct HierarchyNode {
        /// UUID.
        pub id: String,
        /// Display name.
        pub name: String,
        /// The reseller above.
        pub parent_id: Option<String>,
        /// Merchants in the whole subtree.
        pub merchant_count: u64,
        /// Devices in the whole subtree.
        pub device_count: u64,
        /// Sub-resellers, each with its own subtree.
        pub resellers: Children,
        /// The reseller's own merchants.
        pub merchants: Vec<MerchantCount>,
    }
}

/// Sub-resellers: described by reference, since a node contains nodes.
#[derive(Debug, serde::Serialize)]
pub struct Children(Vec<HierarchyNode>);

impl Shape for Children {
    fn schema() -> Value {
        json!({"type": "array", "items": {"$ref": "#/components/schemas/ResellerNode"}})
    }
}

/// `GET /resellers/{id}/hierarchy`: the subtree with merchant and device counts.
pub async fn reseller_hierarchy(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let root = reseller(app, p, call.param(0), Action::Read).await?;
    tree_scope(p)?;
    Ok(reply::json(&hierarchy_node(app, &root, 0).await?))
}

/// One node with its subtree and counts.
async fn hierarchy_node(
    app: &Backoffice<'_>,
    r: &Reseller,
    depth: usize,
) -> Result<HierarchyNode, ApiError> {
    if depth > MAX_DEPTH {
        return Err(ApiError::internal(&"reseller tree deeper than 32"));
    }
    let mut merchant_count = 0u64;
    let mut device_count = 0u64;
    let mut merchants = Vec::new();
    for m in app.db.all::<Merchant>("merchant_tree", &r.id).await? {
        if m.reseller_id != r.id {
            continue;
        }
        let devices = app.db.all::<Device>("devices", &m.id).await?.len() as u64;
        merchant_count += 1;
        device_count += devices;
        merchants.push(MerchantCount {
            id: m.id,
            name: m.name,
            device_count: devices,
        });
    }
    let mut resellers = Vec::new();
    for child in app.db.all::<Reseller>("reseller_children", &r.id).await? {
        // Boxed: an async fn cannot hold its own future inline.
        let node = Box::pin(hierarchy_node(app, &child, depth + 1)).await?;
        merchant_count += node.merchant_count;
        device_count += node.device_count;
        resellers.push(node);
    }
    Ok(HierarchyNode {
        id: r.id.clone(),
        name: r.name.clone(),
        parent_id: r.parent_id.clone(),
        merchant_count,
        device_count,
        resellers: Children(resellers),
        merchants,
    })
}
