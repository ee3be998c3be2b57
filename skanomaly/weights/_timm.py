"""The two timm helpers every weights source shares."""


def create_timm_model(name, pretrained, **kwargs):
    """``timm.create_model``, with an unknown name as a ``ValueError`` naming it."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(
                f"Unknown timm backbone {name!r}; timm.list_models() lists the "
                "names (e.g. 'efficientnet_b4', 'resnet18')."
            ) from exc
        raise


def is_classifier(model, key):
    """Whether ``key`` names a tensor of the timm model's classifier."""
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    if isinstance(classifier, str):
        classifier = (classifier,)
    return key.startswith(tuple(f"{c}." for c in classifier))
