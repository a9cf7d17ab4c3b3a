"""``GET /trial``: the trial definition without secrets (URS §8, R-BLIND-1)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from randomizer.api.auth import current_actor, requires
from randomizer.api.parsing import StrictBlueprint
from randomizer.domain import TrialDefinition
from randomizer.roles import READ_TRIAL
from randomizer.schemas import TrialSchema
from randomizer.state import app_state

blp = StrictBlueprint("trial", __name__, url_prefix="/api/v1", description="The trial")


def trial_view(definition: TrialDefinition, *, blinded: bool) -> dict[str, Any]:
    """The definition as a user may see it: blinded roles never see block sizes or list
    length (ICH E9 advises keeping block length from investigators)."""
    view: dict[str, Any] = {
        "id": definition.id,
        "title": definition.title,
        "registry_id": definition.registry_id,
        "arms": [{"id": a.id, "label": a.label, "ratio": a.ratio} for a in definition.arms],
        "factors": [
            {"id": f.id, "levels": list(f.levels), "source": f.source} for f in definition.factors
        ],
        "strata": [{"number": s.number, "key": s.key} for s in definition.strata()],
        "screening": {
            "window_days": definition.screening_window_days,
            "number_pattern": definition.screening_number_pattern,
        },
        "eligibility": {
            "fields": [
                {
                    "id": f.id,
                    "type": f.type,
                    "minimum": None if f.minimum is None else str(f.minimum),
                    "maximum": None if f.maximum is None else str(f.maximum),
                    "label": f.label,
                }
                for f in definition.eligibility_fields
            ],
            "rules": [
                {"id": r.id, "text": r.text, "eligible_when": r.describe()}
                for r in definition.eligibility_rules
            ],
        },
        "kits": {
            "grams_per_kit": str(definition.grams_per_kit),
            "do_not_dispense_days": definition.do_not_dispense_days,
            "types": [
                {"arm": k.arm, "description": k.description, "grams_igg": str(k.grams_igg)}
                for k in definition.kit_types
            ],
        },
        "dosing": {"grams_per_kg_per_week": str(definition.grams_per_kg_per_week)},
        "visits": {
            "window_days": definition.visit_window_days,
            "schedule": [
                {"id": v.id, "week": v.week, "dispenses_weeks": v.dispenses_weeks}
                for v in definition.visits
            ],
        },
        "audit": {"origin": definition.audit_origin},
        "unblinding": {
            "reasons": list(definition.unblinding_reasons),
            "detail_required_for": list(definition.unblinding_detail_required),
        },
    }
    if not blinded:
        view["randomisation"] = {
            "block_sizes": list(definition.block_sizes),
            "slots_per_stratum": definition.slots_per_stratum,
        }
    return view


@blp.route("/trial")
class Trial(MethodView):
    @requires(READ_TRIAL)
    @blp.response(200, TrialSchema)
    def get(self) -> dict[str, Any]:
        """The trial definition; block sizes and list length for the statistician only."""
        return trial_view(app_state().ctx.definition, blinded=current_actor().blinded)
