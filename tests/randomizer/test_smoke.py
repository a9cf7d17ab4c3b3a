def test_screen_and_randomize(api):
    response = api.screen_and_randomize("S-0001")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["randomization_number"] == "R02-0001"
    assert len(body["kits"]) == 4
